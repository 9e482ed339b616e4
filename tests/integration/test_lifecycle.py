"""The process lifecycle end to end: SIGTERM drain, reloads (file change and SIGHUP, good and bad
configs, listeners added, removed and moved), the admin's lifecycle endpoints, and the `validate` and
`run` commands on good and bad files."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from kit import ROOT, DemoUpstream, Proxy, Response, free_port, http, is_closed, refuses

NEW_ROUTE = """
      - match: {path: /new}
        direct: {status: 200, body: "new route\\n"}"""


def cfg(admin: int, demo: int, listeners: dict[str, int], *, drain: str = "0s", grace: str = "5s",
        routes: str = "", cluster: str = "") -> str:
    """A config whose listeners each route `routes` first, then everything to the demo upstream."""
    ls = "".join(f"""
  - name: {name}
    address: 127.0.0.1:{port}
    routes:{routes}
      - match: /
        cluster: demo""" for name, port in listeners.items())
    return f"""
admin: 127.0.0.1:{admin}
drain_time: {drain}
grace_time: {grace}
listeners:{ls}
clusters:
  demo:
    endpoints: [127.0.0.1:{demo}]{cluster}
"""


def eventually(check: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll `check` until true; returns the seconds it took."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if check():
            return time.monotonic() - t0
        time.sleep(0.05)
    raise AssertionError(f"not within {timeout}s: {what}")


def serves(port: int, path: str = "/hello") -> bool:
    try:
        return http(port, path=path).status == 200
    except OSError:
        return False


class InFlight(threading.Thread):
    """One request on its own connection, in a thread; `response` or `error` once done."""

    def __init__(self, port: int, path: str) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.path = path
        self.response: Response | None = None
        self.error: BaseException | None = None
        self.start()

    def run(self) -> None:
        try:
            self.response = http(self.port, path=self.path)
        except BaseException as err:  # reported by result()
            self.error = err

    def result(self, timeout: float = 10.0) -> Response:
        self.join(timeout)
        assert not self.is_alive(), f"{self.path} still running"
        assert self.error is None, f"{self.path} failed: {self.error!r}"
        assert self.response is not None
        return self.response


def wait_in_flight(p: Proxy, listener: str, n: int = 1) -> None:
    eventually(lambda: p.metric("meshpy_downstream_rq_active", listener=listener) >= n, 5,
               f"{n} request(s) in flight on {listener}")


@contextlib.contextmanager
def running(config: str, admin: int, loop: str = "uvloop") -> Iterator[Proxy]:
    p = Proxy(config, admin, loop=loop).start()
    try:
        yield p
    finally:
        if p.alive():
            assert p.stop() == 0, p.logs()
        elif p.path is not None:
            p.path.unlink(missing_ok=True)


def run_meshpy(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "meshpy", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env=env)


# -- SIGTERM -----------------------------------------------------------------------------------------


def test_sigterm_drains_then_exits(loop_name: str, demo: DemoUpstream) -> None:
    admin, port = free_port(), free_port()
    drain = 1.5
    config = cfg(admin, demo.port, {"web": port}, drain=f"{drain}s", grace="10s")
    p = Proxy(config, admin, loop=loop_name).start()
    try:
        keep = socket.create_connection(("127.0.0.1", port), timeout=10)
        r = http(port, path="/hello", sock=keep)
        assert r.status == 200 and r.header("connection") is None
        # In flight across the whole drain: it outlives the listener and must still get its answer.
        slow = InFlight(port, "/delay/3000")
        wait_in_flight(p, "web")

        t0 = time.monotonic()
        p.signal(signal.SIGTERM)
        assert eventually(lambda: p.admin("/ready")[0] == 503, 0.5, "/ready turns 503") < 0.5
        assert p.admin("/ready")[1].strip() == "DRAINING"

        # The idle keep-alive connection gets its next answer with `Connection: close`, then is closed.
        r = http(port, path="/hello", sock=keep)
        assert r.status == 200 and r.header("connection") == "close"
        assert is_closed(keep)
        keep.close()

        # New connections are still accepted while the drain time runs; none fails.
        answers: list[Response] = []
        while time.monotonic() - t0 < drain - 0.5:
            answers.append(http(port, path="/hello"))
            time.sleep(0.05)
        assert len(answers) >= 5
        assert all(a.status == 200 and a.header("connection") == "close" for a in answers)

        # Then the listener stops, while the slow request is still in flight.
        eventually(lambda: refuses(port), drain + 1.0, "the listener stops after the drain time")
        assert time.monotonic() - t0 >= drain - 0.1
        assert p.alive() and slow.is_alive()

        r = slow.result()
        assert r.status == 200 and r.body == b"delayed\n"
        assert p.proc is not None
        assert p.proc.wait(5) == 0, p.logs()
        assert time.monotonic() - t0 < 5.0  # exits once the last request is done, not after the grace time
        assert "shutting down: drain 1.5s, grace 10.0s" in p.logs()
    finally:
        p.stop()


@pytest.mark.parametrize("second", [signal.SIGINT, signal.SIGTERM])
def test_a_second_signal_stops_at_once(demo: DemoUpstream, second: int) -> None:
    admin, port = free_port(), free_port()
    p = Proxy(cfg(admin, demo.port, {"web": port}, drain="30s", grace="30s"), admin).start()
    try:
        slow = InFlight(port, "/delay/20000")
        wait_in_flight(p, "web")
        p.signal(signal.SIGINT)  # Ctrl-C: drain 30 s, then up to 30 s for the slow request
        eventually(lambda: p.admin("/ready")[0] == 503, 5, "draining")
        assert "(1 connections open, 1 requests in flight; a second signal stops at once)" in p.logs()
        t0 = time.monotonic()
        p.signal(second)
        assert p.proc is not None and p.proc.wait(10) == 0, p.logs()
        assert time.monotonic() - t0 < 5
        assert "second stop signal: stopping now (1 connections open, 1 requests in flight)" in p.logs()
        slow.join(5)
        assert not slow.is_alive() and slow.response is None and slow.error is not None  # cut, not waited for
    finally:
        p.stop()


def test_sigterm_grace_time_ends_requests_still_running(demo: DemoUpstream) -> None:
    admin, port = free_port(), free_port()
    p = Proxy(cfg(admin, demo.port, {"web": port}, drain="0s", grace="0.5s"), admin).start()
    try:
        slow = InFlight(port, "/delay/5000")
        wait_in_flight(p, "web")
        t0 = time.monotonic()
        p.signal(signal.SIGTERM)
        assert p.proc is not None
        assert p.proc.wait(5) == 0, p.logs()
        assert time.monotonic() - t0 < 2.0
        slow.join(5)
        assert slow.response is None and isinstance(slow.error, ConnectionError)
    finally:
        p.stop()


def stop_time(config: str, admin: int, port: int, request: str | None = None) -> tuple[float, Proxy]:
    """Seconds from SIGTERM to exit, with `request` in flight when the signal comes, if any."""
    p = Proxy(config, admin).start()
    try:
        slow = InFlight(port, request) if request else None
        if slow is not None:
            wait_in_flight(p, "web")
        t0 = time.monotonic()
        p.signal(signal.SIGTERM)
        assert p.proc is not None and p.proc.wait(15) == 0, p.logs()
        took = time.monotonic() - t0
        if slow is not None:
            assert slow.result().status == 200
        return took, p
    finally:
        p.stop()


def test_an_idle_proxy_stops_at_once(demo: DemoUpstream) -> None:
    admin, port = free_port(), free_port()
    took, p = stop_time(cfg(admin, demo.port, {"web": port}, drain="10s"), admin, port)
    assert took < 2.0
    assert "nothing in flight: stopping now" in p.logs()


def test_the_drain_ends_with_the_last_request(demo: DemoUpstream) -> None:
    admin, port = free_port(), free_port()
    took, p = stop_time(cfg(admin, demo.port, {"web": port}, drain="10s"), admin, port, "/delay/1500")
    assert 1.0 < took < 4.0  # the request's own time, not the ten seconds
    assert "nothing in flight: stopping now" in p.logs()


@pytest.mark.parametrize("case", ["exit_when_idle false", "sidecar"])
def test_the_whole_drain_time_when_asked_or_a_sidecar(demo: DemoUpstream, case: str) -> None:
    """A gateway whose balancer needs the whole drain time to notice says exit_when_idle: false; a
    sidecar (an outbound listener) waits by default: its app may still call out while it stops."""
    admin, port = free_port(), free_port()
    config = cfg(admin, demo.port, {"web": port}, drain="1.5s")
    if case == "sidecar":
        config = config.replace("  - name: web\n", "  - name: web\n    direction: outbound\n")
        said = "draining for 1.5s (a sidecar: its app may still call out through it)"
    else:
        config += "exit_when_idle: false\n"
        said = "draining for 1.5s (exit_when_idle is false)"
    took, p = stop_time(config, admin, port)
    assert took >= 1.4
    assert said in p.logs()
    assert "nothing in flight" not in p.logs()


# -- reload ------------------------------------------------------------------------------------------


def test_reload_on_file_change(demo: DemoUpstream) -> None:
    admin, port = free_port(), free_port()
    with running(cfg(admin, demo.port, {"web": port}), admin) as p:
        version = p.config_dump()["version"]
        accepted = p.metric("meshpy_config_loads_total", result="accepted")
        assert json.loads(http(port, path="/new").body)["upstream"] == "demo"  # the catch-all so far

        p.rewrite(cfg(admin, demo.port, {"web": port}, routes=NEW_ROUTE))
        took = eventually(lambda: http(port, path="/new").body == b"new route\n", 3.0, "new route live")
        assert took < 2.5
        assert p.config_dump()["version"] != version
        assert p.metric("meshpy_config_loads_total", result="accepted") == accepted + 1
        assert http(port, path="/hello").status == 200  # the rest still works
        assert f"reload (file changed) of {p.path}: config" in p.logs()


def test_reload_on_sighup(demo: DemoUpstream) -> None:
    admin, port = free_port(), free_port()
    old = cfg(admin, demo.port, {"web": port}, routes=NEW_ROUTE)
    with running(old, admin) as p:
        assert p.path is not None
        assert http(port, path="/new").body == b"new route\n"
        # Same size and same modification time: the file watcher cannot see this change, only SIGHUP.
        new = old.replace("new route", "NEW ROUTE")
        st = p.path.stat()
        tmp = p.path.with_suffix(".sighup")
        tmp.write_text(new)
        os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))
        os.replace(tmp, p.path)

        p.signal(signal.SIGHUP)
        eventually(lambda: http(port, path="/new").body == b"NEW ROUTE\n", 2.0, "SIGHUP reloads")
        logs = p.logs()
        assert f"reload (SIGHUP) of {p.path}: config" in logs
        assert "reload (file changed)" not in logs


def test_meshpy_reload_by_pid_file(demo: DemoUpstream, tmp_path: Path) -> None:
    admin, port = free_port(), free_port()
    pid_file = tmp_path / "meshpy.pid"
    old = cfg(admin, demo.port, {"web": port}, routes=NEW_ROUTE)
    p = Proxy(old, admin, extra_args=["--pid-file", str(pid_file)]).start()
    try:
        assert p.proc is not None and pid_file.read_text().strip() == str(p.proc.pid)
        assert p.path is not None
        new = old.replace("new route", "NEW ROUTE")
        st = p.path.stat()  # same size and time: only the signal can tell the proxy (see above)
        tmp = p.path.with_suffix(".reload")
        tmp.write_text(new)
        os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))
        os.replace(tmp, p.path)
        out = run_meshpy("reload", "--pid-file", str(pid_file))
        assert out.returncode == 0 and f"asked process {p.proc.pid} to reload" in out.stdout
        eventually(lambda: http(port, path="/new").body == b"NEW ROUTE\n", 2.0, "meshpy reload reloads")
    finally:
        assert p.stop() == 0
    assert not pid_file.exists()  # removed at exit
    out = run_meshpy("reload", "--pid-file", str(pid_file))
    assert out.returncode == 1 and f"meshpy reload: {pid_file}: no such file" in out.stderr
    pid_file.write_text("999999999\n")
    out = run_meshpy("reload", "--pid-file", str(pid_file))
    assert out.returncode == 1 and "no process 999999999" in out.stderr


def test_sighup_without_a_config_file_is_not_the_end(demo: DemoUpstream) -> None:
    admin = free_port()
    p = Proxy("", admin, extra_args=["--xds", f"127.0.0.1:{free_port()}", "--node-id", "n1",
                                     "--admin", f"127.0.0.1:{admin}"]).start(wait_ready=False)
    try:
        eventually(lambda: " live: 0 listeners" in p.logs(), 10, "serving")
        time.sleep(0.3)  # (the signal handlers are set just after the first config is live)
        p.signal(signal.SIGHUP)
        eventually(lambda: "SIGHUP: no config file to reload" in p.logs(), 5, "SIGHUP said")
        assert p.alive()
    finally:
        p.stop()


@pytest.fixture(scope="module")
def steady(demo: DemoUpstream) -> Iterator[tuple[Proxy, int, int]]:
    """A proxy whose file gets one bad config after another; its running config must never change."""
    admin, port = free_port(), free_port()
    with running(cfg(admin, demo.port, {"web": port}, routes=NEW_ROUTE), admin) as p:
        yield p, port, admin


@pytest.mark.parametrize("case", ["unknown_key", "missing_cluster", "invalid_yaml", "address_in_use"])
def test_bad_reload_is_rejected(steady: tuple[Proxy, int, int], demo: DemoUpstream, case: str) -> None:
    p, port, admin = steady
    good = cfg(admin, demo.port, {"web": port}, routes=NEW_ROUTE)
    version = p.config_dump()["version"]
    rejected = p.metric("meshpy_config_loads_total", result="rejected")
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    extra_port = free_port()
    try:
        if case == "unknown_key":
            bad, reason = good.replace("routes:", "routez:", 1), \
                "listeners[0].routez: unknown key (did you mean 'routes'?)"
        elif case == "missing_cluster":
            bad, reason = good.replace("cluster: demo", "cluster: nowhere"), \
                "listeners[0].routes[1].cluster: unknown cluster 'nowhere'"
        elif case == "invalid_yaml":
            bad, reason = good + "  oops: [\n", f"invalid YAML in {p.path} at line"
        else:
            # Two new listeners, the second on a port that is taken: nothing of this config goes live,
            # not even the first new listener, whose socket could be bound.
            bad = cfg(admin, demo.port, {"web": port, "extra": extra_port, "clash": taken.getsockname()[1]})
            reason = f"listeners[2].address: cannot listen on 127.0.0.1:{taken.getsockname()[1]}: "
        p.rewrite(bad)
        eventually(lambda: p.metric("meshpy_config_loads_total", result="rejected") > rejected, 3.0,
                   "the bad config is rejected")
        assert p.metric("meshpy_config_loads_total", result="rejected") == rejected + 1
        logs = p.logs()
        assert f"reload (file changed) of {p.path} rejected; the running config stays" in logs
        assert reason in logs
        # The old config serves on, unchanged.
        assert p.config_dump()["version"] == version
        assert http(port, path="/new").body == b"new route\n"
        assert http(port, path="/hello").status == 200
        assert p.admin("/ready")[0] == 200
        assert refuses(extra_port)
    finally:
        taken.close()


def test_listeners_added_removed_and_moved_by_reload(loop_name: str, demo: DemoUpstream) -> None:
    admin, a, b, a2 = free_port(), free_port(), free_port(), free_port()
    with running(cfg(admin, demo.port, {"a": a}), admin, loop=loop_name) as p:
        assert serves(a) and refuses(b)

        p.rewrite(cfg(admin, demo.port, {"a": a, "b": b}))
        eventually(lambda: serves(b), 3.0, "the added listener serves")
        assert p.metric("meshpy_downstream_rq_total", listener="b") >= 1

        keep = socket.create_connection(("127.0.0.1", a), timeout=5)
        assert http(a, path="/hello", sock=keep).status == 200
        p.rewrite(cfg(admin, demo.port, {"a": a}))
        eventually(lambda: refuses(b), 3.0, "the removed listener stops accepting")
        assert serves(a)
        assert http(a, path="/hello", sock=keep).status == 200  # an untouched listener's connections stay

        p.rewrite(cfg(admin, demo.port, {"a": a2}))
        eventually(lambda: serves(a2), 3.0, "the moved listener serves on its new address")
        assert refuses(a)
        assert is_closed(keep), "an idle connection of the moved listener is closed"
        keep.close()
        dump = p.config_dump()
        assert dump["listeners"] == [{"name": "a", "address": f"127.0.0.1:{a2}", "bound_port": a2}]


def reload_outcome(p: Proxy, change: Callable[[], None]) -> bool:
    """Apply `change` to the file; True if the reload was accepted, False if rejected."""
    accepted = p.metric("meshpy_config_loads_total", result="accepted")
    rejected = p.metric("meshpy_config_loads_total", result="rejected")
    change()
    eventually(lambda: p.metric("meshpy_config_loads_total", result="accepted") > accepted
               or p.metric("meshpy_config_loads_total", result="rejected") > rejected, 3.0, "a reload")
    return p.metric("meshpy_config_loads_total", result="accepted") > accepted


def test_listener_renamed_on_the_same_address(demo: DemoUpstream) -> None:
    admin, port = free_port(), free_port()
    with running(cfg(admin, demo.port, {"old_name": port}), admin) as p:
        assert reload_outcome(p, lambda: p.rewrite(cfg(admin, demo.port, {"new_name": port}))), p.logs()
        assert p.config_dump()["listeners"] == [
            {"name": "new_name", "address": f"127.0.0.1:{port}", "bound_port": port}]
        assert serves(port)


def test_listener_protocol_changed_on_the_same_address(demo: DemoUpstream) -> None:
    admin, port = free_port(), free_port()
    with running(cfg(admin, demo.port, {"web": port}), admin) as p:
        tcp = cfg(admin, demo.port, {}).replace("listeners:", f"""listeners:
  - name: web
    address: 127.0.0.1:{port}
    protocol: tcp
    cluster: demo""")
        assert reload_outcome(p, lambda: p.rewrite(tcp)), p.logs()
        # Now plain bytes to the demo upstream: its answer carries no header the HTTP listener adds.
        r = http(port, path="/")
        assert r.status == 200 and "x-request-id" not in json.loads(r.body)["headers"]


def test_request_in_flight_during_reload_finishes(demo: DemoUpstream) -> None:
    admin, a, a2 = free_port(), free_port(), free_port()
    with running(cfg(admin, demo.port, {"a": a}), admin) as p:
        slow = InFlight(a, "/delay/1500")
        wait_in_flight(p, "a")
        # The reload moves the listener the request came in on and redefines the cluster it went to.
        p.rewrite(cfg(admin, demo.port, {"a": a2}, routes=NEW_ROUTE, cluster="\n    connect_timeout: 2s"))
        eventually(lambda: serves(a2, "/new"), 3.0, "the new config is live")
        assert slow.is_alive()
        r = slow.result()
        assert r.status == 200 and r.body == b"delayed\n"
        assert http(a2, path="/hello").status == 200  # the redefined cluster serves


# -- admin lifecycle endpoints -----------------------------------------------------------------------


def test_quitquitquit_exits_zero(demo: DemoUpstream) -> None:
    admin, port = free_port(), free_port()
    p = Proxy(cfg(admin, demo.port, {"web": port}, drain="5s"), admin).start()
    try:
        assert p.admin("/quitquitquit")[0] == 405  # GET does nothing
        assert p.alive() and serves(port)
        slow = InFlight(port, "/delay/700")
        wait_in_flight(p, "web")
        t0 = time.monotonic()
        assert p.admin("/quitquitquit", method="POST") == (200, "OK\n")
        assert p.proc is not None
        assert p.proc.wait(5) == 0, p.logs()
        assert time.monotonic() - t0 < 3.0  # no drain time (5s here) for /quitquitquit
        assert slow.result().status == 200  # the request in flight still finished
    finally:
        p.stop()


def test_drain_listeners_turns_ready_503(demo: DemoUpstream) -> None:
    admin, port = free_port(), free_port()
    with running(cfg(admin, demo.port, {"web": port}, drain="1s"), admin) as p:
        assert p.admin("/ready") == (200, "LIVE\n")
        assert p.admin("/drain_listeners?graceful", method="POST") == (200, "OK\n")
        assert p.admin("/ready") == (503, "DRAINING\n")
        r = http(port, path="/hello")  # still accepting during the drain time, asking clients to leave
        assert r.status == 200 and r.header("connection") == "close"
        eventually(lambda: refuses(port), 3.0, "the listeners stop after the drain time")
        assert p.alive()
        assert p.admin("/ready")[0] == 503
        assert p.admin("/server_info")[0] == 200


def test_config_dump_and_clusters(demo: DemoUpstream) -> None:
    admin, port = free_port(), free_port()
    with running(cfg(admin, demo.port, {"web": port}, routes=NEW_ROUTE), admin) as p:
        assert http(port, path="/hello").status == 200
        dump = p.config_dump()
        version = dump["version"]
        assert isinstance(version, str) and len(version) == 12
        assert dump["source"] == str(p.path)
        config = dump["config"]
        assert isinstance(config, dict)
        (listener,) = config["listeners"]
        assert listener["name"] == "web" and listener["address"] == {"host": "127.0.0.1", "port": port}
        routes = listener["http"]["route_config"]["virtual_hosts"][0]["routes"]
        assert [r["match"]["path"] for r in routes] == ["/new", "/"]
        assert routes[1]["action"]["cluster"] == "demo"
        (cluster,) = config["clusters"]
        assert cluster["name"] == "demo"
        assert cluster["endpoints"] == [{"address": {"host": "127.0.0.1", "port": demo.port}, "weight": 1}]
        assert dump["listeners"] == [{"name": "web", "address": f"127.0.0.1:{port}", "bound_port": port}]
        assert f'config_version="{version}"' in p.admin("/stats/prometheus")[1]

        status, body = p.admin("/clusters")
        assert status == 200
        (c,) = json.loads(body)["clusters"]
        assert c["name"] == "demo" and c["type"] == "static"
        (ep,) = c["endpoints"]
        assert ep["address"] == f"127.0.0.1:{demo.port}" and ep["health"] == "healthy"
        assert ep["active_connections"] >= 1  # the pooled connection of the request above
        text = p.admin("/clusters?format=text")[1]
        assert f"demo::127.0.0.1:{demo.port}::health_flags::healthy" in text.splitlines()


# -- meshpy validate / meshpy run --------------------------------------------------------------------


def test_validate_accepts_every_shipped_config() -> None:
    files = sorted(str(f.relative_to(ROOT)) for f in (ROOT / "config").glob("*.yaml"))
    assert files
    out = run_meshpy("validate", *files)
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == len(files)
    for f, line in zip(files, lines, strict=True):
        assert line.startswith(f"{f}: ok (")


def test_a_config_that_serves_nothing_is_said(tmp_path: Path) -> None:
    empty = tmp_path / "empty.yaml"
    admin = free_port()
    empty.write_text(f"admin: 127.0.0.1:{admin}\nlisteners: []\n")
    out = run_meshpy("validate", str(empty))
    assert out.returncode == 0  # a warning, not an error: a placeholder config is legitimate
    assert out.stdout.splitlines() == [
        f"{empty}: ok (meshpy format, 0 listeners, 0 clusters)",
        f"{empty}: warning: no listeners, and no xDS to bring any: a proxy with this config serves nothing"]
    p = Proxy(empty.read_text(), admin).start()
    try:
        eventually(lambda: "serves nothing" in p.logs(), 10, "the warning logged by meshpy run")
    finally:
        assert p.stop() == 0


MULTI_ERRORS = """\
admin: 127.0.0.1:9901
listeners:
  - name: web
    address: 127.0.0.1:10000
    protocl: http
    routes:
      - match: /a
        cluster: backnd
clusters:
  - name: backend
    endpoints: [127.0.0.1:70000]
"""


def test_validate_reports_every_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(MULTI_ERRORS)
    good = ROOT / "config" / "dev.yaml"
    out = run_meshpy("validate", str(bad), str(good))
    assert out.returncode != 0
    lines = out.stdout.splitlines()
    assert set(lines[:3]) == {
        f"{bad}: listeners[0].protocl: unknown key (did you mean 'protocol'?)",
        f"{bad}: clusters[0].endpoints[0]: port 70000 is out of range",
        f"{bad}: listeners[0].routes[0].cluster: unknown cluster 'backnd' (did you mean 'backend'?)",
    }
    assert lines[3].startswith(f"{good}: ok (")  # the other file is still checked
    assert len(lines) == 4


def test_validate_single_errors(tmp_path: Path) -> None:
    port = tmp_path / "port.yaml"
    port.write_text("listeners:\n  - address: 127.0.0.1:10000\n    cluster: app\n"
                    "clusters:\n  - name: app\n    endpoints: [127.0.0.1:70000]\n")
    out = run_meshpy("validate", str(port))
    assert out.returncode == 1
    assert out.stdout.splitlines() == [f"{port}: clusters[0].endpoints[0]: port 70000 is out of range"]

    yaml = tmp_path / "yaml.yaml"
    yaml.write_text("listeners:\n  - address: 127.0.0.1:1\n    cluster: a\n   bad: [\n")
    missing = tmp_path / "missing.yaml"
    out = run_meshpy("validate", str(yaml), str(missing))
    assert out.returncode == 1
    yaml_line, missing_line = out.stdout.splitlines()
    assert yaml_line.startswith(f"{yaml}: invalid YAML in {yaml} at line 4, column")
    assert missing_line.startswith(f"{missing}: ") and "No such file or directory" in missing_line


def test_run_with_bad_config_exits_nonzero(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(MULTI_ERRORS)
    out = run_meshpy("run", "-c", str(bad), timeout=20)
    assert out.returncode != 0
    output = out.stdout + out.stderr
    assert f"{bad}: clusters[0].endpoints[0]: port 70000 is out of range" in output
    assert f"{bad}: listeners[0].protocl: unknown key (did you mean 'protocol'?)" in output


@contextlib.contextmanager
def taken_port() -> Iterator[int]:
    """A port something else listens on while the block runs."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        yield taken.getsockname()[1]


def test_run_exits_when_its_admin_port_is_taken(demo: DemoUpstream) -> None:
    # As Envoy: exit 1. Running on without an admin would leave /ready to whatever holds the port (a
    # second proxy beside a first answered with the first one's state).
    with taken_port() as admin:
        web = free_port()
        p = Proxy(cfg(admin, demo.port, {"web": web}), admin).start(wait_ready=False)
        try:
            assert p.proc is not None
            assert p.proc.wait(20) == 1
            assert f"{p.path}: admin.address: cannot listen on 127.0.0.1:{admin}: " in p.logs()
            assert refuses(web)  # nothing was left listening
        finally:
            p.stop()


@pytest.mark.parametrize("flag", ["--envoy-dir", "--meshpy-dir"])
def test_control_refuses_a_directory_that_is_not_there(tmp_path: Path, flag: str) -> None:
    # Else it ran on serving nothing, and every proxy waited for a first config that never came.
    missing = tmp_path / "nope"
    out = run_meshpy("control", flag, str(missing), "--listen", f"127.0.0.1:{free_port()}", timeout=20)
    assert out.returncode == 2
    assert f"meshpy control: {flag} {missing}: no such directory" in out.stderr


def test_control_refuses_the_port_of_a_running_one(tmp_path: Path) -> None:
    # gRPC sets SO_REUSEPORT by default: a second control plane used to share the port, and each proxy
    # followed whichever of the two it reached.
    port = free_port()
    args = [sys.executable, "-m", "meshpy", "control", "--envoy-dir", str(tmp_path), "--listen",
            f"127.0.0.1:{port}"]
    first = subprocess.Popen(args, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        eventually(lambda: not refuses(port), 10, "the first control plane listens")
        second = run_meshpy(*args[3:], timeout=20)
        assert second.returncode == 1
        assert f"cannot listen on 127.0.0.1:{port}" in second.stderr
        assert first.poll() is None
    finally:
        first.terminate()
        first.wait(10)


def test_run_exits_nonzero_when_a_listener_cannot_bind(demo: DemoUpstream) -> None:
    with taken_port() as port:
        admin = free_port()
        p = Proxy(cfg(admin, demo.port, {"web": port}), admin).start(wait_ready=False)
        try:
            assert p.proc is not None
            assert p.proc.wait(20) != 0
            assert f"{p.path}: listeners[0].address: cannot listen on 127.0.0.1:{port}: " in p.logs()
            assert refuses(admin)  # nothing was left listening
        finally:
            p.stop()
