"""meshpy as an xDS client of `meshpy control`, from the very bootstrap Envoy uses (state of the world
and delta) and from the short form: the initial config, a live route change, a weighted split, an
endpoint change, a NACK that keeps the last config serving, both source kinds, a control-plane restart,
and 50 pushes under load without one failed request."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from kit import DemoUpstream, Proxy, eventually, free_port, http
from xds_world import (
    CLUSTER,
    MESHPY_YAML,
    TEAPOT,
    WEIGHTED,
    Control,
    add_second_cluster,
    bootstrap,
    endpoints,
    routes,
    write_resources,
)


def xds_metric(proxy: Proxy, result: str) -> float:
    _, text = proxy.admin("/metrics")
    pattern = rf'meshpy_xds_updates_total{{result="{result}",[^}}]*}} (\S+)'
    return sum(float(v) for v in re.findall(pattern, text))


@pytest.fixture(params=["GRPC", "DELTA_GRPC"], ids=["sotw", "delta"])
def world(request: pytest.FixtureRequest, tmp_path: Path, demo: DemoUpstream,
          ) -> Iterator[tuple[Path, Control, Proxy, int]]:
    source, port = tmp_path / "resources", free_port()
    write_resources(source, port, demo.port)
    control = Control(source, free_port(), tmp_path / "control.log", poll_interval=0.1).start()
    admin = free_port()
    proxy = Proxy(bootstrap(admin, control.port, request.param, node="meshpy-1"), admin)
    try:
        proxy.start()  # returns once /ready says 200: the initial config has arrived
        assert http(port, path="/hello").status == 200
        yield source, control, proxy, port
    finally:
        proxy.stop()
        if control.proc is not None and control.proc.poll() is None:
            control.stop()


def test_meshpy_follows_routes_splits_and_endpoints(world: tuple[Path, Control, Proxy, int],
                                                    demo_b: DemoUpstream) -> None:
    source, control, proxy, port = world
    assert http(port, path="/hello").header("x-upstream") == "demo"
    (source / "routes.yaml").write_text(routes(TEAPOT))
    eventually(lambda: http(port, path="/teapot").status == 418, "the new route is served")
    assert http(port, path="/teapot").body == b"short and stout"

    add_second_cluster(source, demo_b.port)
    (source / "routes.yaml").write_text(WEIGHTED)
    eventually(lambda: http(port, path="/hello").header("x-upstream") == "demo-b", "the split reaches demo-b")
    seen = [http(port, path="/hello").header("x-upstream") for _ in range(200)]
    assert 60 <= seen.count("demo") <= 140 and seen.count("demo") + seen.count("demo-b") == 200

    (source / "routes.yaml").write_text(routes())
    (source / "endpoints.yaml").write_text(endpoints(demo_b.port))
    # 20 in a row: under the split that is one chance in a million, so the endpoint change is live.
    eventually(lambda: all(http(port, path="/hello").header("x-upstream") == "demo-b" for _ in range(20)),
               "the endpoint change")
    # The ADS server sees meshpy ACK every type at the version it sent.
    [node] = json.loads(control.get("/nodes")[1])
    assert node["node"] == "meshpy-1" and node["last_nack"] is None
    eventually(lambda: json.loads(control.get("/nodes")[1])[0]["acked"] == node["snapshot"], "all ACKed")
    dump = json.loads(proxy.admin("/config_dump")[1])
    assert dump["xds"]["connected"] and dump["xds"]["initialized"]
    assert dump["xds"]["resources"]["Cluster"] == ["demo", "demo-b"]
    assert xds_metric(proxy, "rejected") == 0


def test_meshpy_nacks_a_bad_resource_and_keeps_serving(world: tuple[Path, Control, Proxy, int]) -> None:
    source, control, proxy, port = world
    # What Envoy takes and meshpy lacks: the control plane warns (its fleet may be Envoy) and pushes;
    # meshpy NACKs it. (A value every proxy refuses is stopped at the control plane: the Envoy suite.)
    field = "close_connections_on_host_set_change"
    lacking = f"common_lb_config.{field}"
    (source / "cluster.yaml").write_text(CLUSTER + f"common_lb_config: {{ {field}: true }}\n")
    eventually(lambda: json.loads(control.get("/nodes")[1])[0]["last_nack"] is not None, "the NACK")
    [node] = json.loads(control.get("/nodes")[1])
    assert node["last_nack"].endswith(f"Cluster demo: {lacking}: not supported by meshpy")
    assert f"rejected Cluster update: Cluster demo: {lacking}" in proxy.logs()
    assert xds_metric(proxy, "rejected") >= 1
    assert http(port, path="/hello").status == 200
    (source / "cluster.yaml").write_text(CLUSTER)
    (source / "routes.yaml").write_text(routes(TEAPOT))
    eventually(lambda: http(port, path="/teapot").status == 418, "a good config is taken again")


def test_meshpy_rides_out_a_control_plane_restart(world: tuple[Path, Control, Proxy, int]) -> None:
    source, control, proxy, port = world
    assert control.kill() == -9
    for _ in range(20):
        assert http(port, path="/hello").status == 200
        time.sleep(0.05)
    assert proxy.admin("/ready")[0] == 200
    (source / "routes.yaml").write_text(routes(TEAPOT))
    control.start()
    eventually(lambda: http(port, path="/teapot").status == 418, "meshpy reconnects and converges", 20)


def test_meshpy_short_form_follows_a_meshpy_yaml_directory(tmp_path: Path, demo: DemoUpstream,
                                                           demo_b: DemoUpstream) -> None:
    source = tmp_path / "meshpy"
    source.mkdir()
    port = free_port()
    (source / "web.yaml").write_text(MESHPY_YAML.format(port=port, upstream=demo.port))
    control = Control(source, free_port(), tmp_path / "control.log", "--meshpy-dir", 0.1).start()
    admin = free_port()
    proxy = Proxy("", admin, extra_args=["--xds", f"127.0.0.1:{control.port}", "--node-id", "short-1",
                                         "--node-cluster", "web", "--admin", f"127.0.0.1:{admin}"])
    try:
        proxy.start()
        r = http(port, path="/teapot")
        assert (r.status, r.body) == (418, b"from meshpy yaml")
        assert http(port, path="/hello").header("x-upstream") == "demo"
        (source / "web.yaml").write_text(MESHPY_YAML.format(port=port, upstream=demo_b.port))
        eventually(lambda: http(port, path="/hello").header("x-upstream") == "demo-b", "the endpoint change")
        [node] = json.loads(control.get("/nodes")[1])
        assert (node["node"], node["cluster"]) == ("short-1", "web")
    finally:
        proxy.stop()
        control.stop()


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed (make test installs it)")
def test_fifty_pushes_under_load_fail_no_request(world: tuple[Path, Control, Proxy, int],
                                                  demo: DemoUpstream, demo_b: DemoUpstream) -> None:
    source, _control, proxy, port = world
    add_second_cluster(source, demo_b.port)
    eventually(lambda: "demo-b" in proxy.admin("/config_dump")[1], "the second cluster")
    before = xds_metric(proxy, "accepted")
    load = subprocess.Popen(["wrk", "-t", "2", "-c", "16", "-d", "22s", f"http://127.0.0.1:{port}/hello"],
                            stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(1)
        for i in range(50):  # routes, splits and endpoints in turn, one push every 0.4 s
            step = i % 4
            if step == 0:
                (source / "routes.yaml").write_text(WEIGHTED)
            elif step == 1:
                (source / "endpoints.yaml").write_text(endpoints(demo_b.port))
            elif step == 2:
                (source / "routes.yaml").write_text(routes(TEAPOT))
            else:
                (source / "endpoints.yaml").write_text(endpoints(demo.port))
            time.sleep(0.4)
        out, _ = load.communicate(timeout=30)
    finally:
        if load.poll() is None:
            load.kill()
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    assert requests > 1000, out
    assert "Non-2xx" not in out and "Socket errors" not in out, out
    assert xds_metric(proxy, "accepted") - before >= 50
    assert xds_metric(proxy, "rejected") == 0


def test_the_sample_pair_works_together(tmp_path: Path, demo: DemoUpstream) -> None:
    """config/control served by meshpy control, followed through config/xds-client.yaml (ports moved)."""
    root = Path(__file__).resolve().parents[2]
    source = tmp_path / "control"
    source.mkdir()
    port, ads, admin = free_port(), free_port(), free_port()
    for f in (root / "config" / "control").glob("*.yaml"):
        text = f.read_text().replace("port_value: 10001", f"port_value: {port}")
        (source / f.name).write_text(text.replace("port_value: 18080", f"port_value: {demo.port}"))
    client = (root / "config" / "xds-client.yaml").read_text()
    client = client.replace("port_value: 18000", f"port_value: {ads}").replace("port_value: 9903",
                                                                               f"port_value: {admin}")
    control = Control(source, ads, tmp_path / "control.log").start()
    proxy = Proxy(client, admin)
    try:
        proxy.start()
        assert http(port, path="/healthz").body == b"ok\n"
        assert http(port, path="/hello").header("x-upstream") == "demo"
    finally:
        proxy.stop()
        control.stop()


def test_nodes_of_another_cluster_get_their_own_set(tmp_path: Path, demo: DemoUpstream) -> None:
    """node-cluster/reviews/ gives the `reviews` sidecar its own routes; the `web` one keeps the shared."""
    source = tmp_path / "meshpy"
    (source / "node-cluster" / "reviews").mkdir(parents=True)
    web_port, reviews_port = free_port(), free_port()
    (source / "web.yaml").write_text(MESHPY_YAML.format(port=web_port, upstream=demo.port))
    (source / "node-cluster" / "reviews" / "web.yaml").write_text(
        MESHPY_YAML.format(port=reviews_port, upstream=demo.port).replace("from meshpy yaml", "for reviews"))
    control = Control(source, free_port(), tmp_path / "control.log", "--meshpy-dir", 0.1).start()
    proxies = []
    try:
        for node_cluster in ("web", "reviews"):
            admin = free_port()
            proxies.append(Proxy("", admin, extra_args=[
                "--xds", f"127.0.0.1:{control.port}", "--node-id", f"{node_cluster}-1",
                "--node-cluster", node_cluster, "--admin", f"127.0.0.1:{admin}"]).start())
        assert http(web_port, path="/teapot").body == b"from meshpy yaml"
        assert http(reviews_port, path="/teapot").body == b"for reviews"
        # Each node holds its own listener only.
        web, reviews = (json.loads(p.admin("/config_dump")[1])["listeners"] for p in proxies)
        assert [x["bound_port"] for x in web] == [web_port]
        assert [x["bound_port"] for x in reviews] == [reviews_port]
    finally:
        for proxy in proxies:
            proxy.stop()
        control.stop()
