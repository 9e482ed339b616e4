"""`meshpy inject` points the app's kubelet probes at the sidecar's probe port, as Istio's probe rewrite
does, and gives the proxy the originals; what it writes, `meshpy run` reads."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from kube_schema import validate

from meshpy.cli import _parser, _probes
from meshpy.sidecar.inject import InjectError, InjectOptions, inject_text
from meshpy.sidecar.inject_probes import rewrite_probes
from meshpy.sidecar.probes import AppProbe

ROOT = Path(__file__).resolve().parents[3]
NATIVE = InjectOptions(image="meshpy:9.9.9")
CLASSIC = InjectOptions(image="meshpy:9.9.9", native=False)
TIMING = {"initialDelaySeconds": 3, "periodSeconds": 7, "timeoutSeconds": 2, "failureThreshold": 4}

WEB: dict[str, Any] = {
    "name": "web", "image": "web:1",
    "ports": [{"name": "http", "containerPort": 8080}, {"name": "grpc", "containerPort": 9090}],
    "livenessProbe": {"httpGet": {"path": "/healthz", "port": "http", "scheme": "HTTPS",
                                  "httpHeaders": [{"name": "X-Probe", "value": "live"}]},
                      **TIMING, "terminationGracePeriodSeconds": 11},
    "readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 5, "successThreshold": 2},
    "startupProbe": {"grpc": {"port": 9090, "service": "shop.Web"}, "failureThreshold": 30},
}  # fmt: skip
DEPLOYMENT: dict[str, Any] = {
    "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "shop"},
    "spec": {"selector": {"matchLabels": {"app": "shop"}},
             "template": {"metadata": {"labels": {"app": "shop"}}, "spec": {"containers": [WEB]}}},
}  # fmt: skip


def deployment(containers: list[dict[str, Any]] | None = None, annotations: dict[str, str] | None = None,
               init: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    doc = copy.deepcopy(DEPLOYMENT)
    template = doc["spec"]["template"]
    if containers is not None:
        template["spec"]["containers"] = copy.deepcopy(containers)
    if init is not None:
        template["spec"]["initContainers"] = copy.deepcopy(init)
    if annotations is not None:
        template["metadata"]["annotations"] = annotations
    return doc


def inject(doc: dict[str, Any], options: InjectOptions = NATIVE) -> dict[str, Any]:
    """The injected Pod spec, checked against Kubernetes' schemas."""
    out = yaml.safe_load(inject_text(yaml.safe_dump(doc, sort_keys=False), options).text)
    validate(out)
    spec = out["spec"]["template"]["spec"]
    assert isinstance(spec, dict)
    return spec


def container(spec: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in spec.get("initContainers", []) + spec["containers"] if c["name"] == name)


def env(spec: dict[str, Any]) -> dict[str, Any] | None:
    """The originals the proxy is given (None: no variable)."""
    value = next((e["value"] for e in container(spec, "meshpy-proxy")["env"]
                  if e["name"] == "MESHPY_APP_PROBES"), None)
    return None if value is None else dict(json.loads(value))


def excluded_inbound(spec: dict[str, Any]) -> str:
    args = container(spec, "meshpy-init")["args"]
    return str(args[args.index("--exclude-inbound-ports") + 1])


def to_sidecar(path: str, **rest: Any) -> dict[str, Any]:
    return {"httpGet": {"path": path, "port": 15021, "scheme": "HTTP"}, **rest}


def test_every_kind_of_network_probe_goes_to_the_probe_port_with_its_timing_kept() -> None:
    spec = inject(deployment())
    web = container(spec, "web")
    assert web["livenessProbe"] == to_sidecar("/app-health/web/livez", **TIMING,
                                              terminationGracePeriodSeconds=11)
    assert web["readinessProbe"] == to_sidecar("/app-health/web/readyz", periodSeconds=5, successThreshold=2)
    assert web["startupProbe"] == to_sidecar("/app-health/web/startupz", failureThreshold=30)
    # The originals, the named port resolved (the proxy has no pod spec to read it from), each with the
    # timeout the check must keep (the kubelet's default, 1 s, when the probe says none).
    assert env(spec) == {
        "/app-health/web/livez": {"httpGet": {"path": "/healthz", "port": 8080, "scheme": "HTTPS",
                                              "httpHeaders": [{"name": "X-Probe", "value": "live"}]},
                                  "timeoutSeconds": 2},
        "/app-health/web/readyz": {"tcpSocket": {"port": 8080}, "timeoutSeconds": 1},
        "/app-health/web/startupz": {"grpc": {"port": 9090, "service": "shop.Web"}, "timeoutSeconds": 1},
    }  # fmt: skip
    # The kubelet reaches the probe port from outside the pod: it is not captured, as the admin port is not.
    assert excluded_inbound(spec) == "15000,15021"


def test_what_inject_writes_is_what_meshpy_run_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = inject(deployment())
    value = json.dumps(env(spec))
    args = _parser().parse_args(["run", "--xds", "x:1", "--node-id", "n", "--app-probes", value,
                                 "--probe-listen", "127.0.0.1:0"])
    server = _probes(args)
    assert server is not None
    assert server.probes == {
        "/app-health/web/livez": AppProbe("httpGet", 8080, 2, "/healthz", True, (("X-Probe", "live"),)),
        "/app-health/web/readyz": AppProbe("tcpSocket", 8080, 1),
        "/app-health/web/startupz": AppProbe("grpc", 9090, 1, service="shop.Web"),
    }
    # The variable, as the injected proxy has it; without it or the flag, no probe port at all.
    plain = _parser().parse_args(["run", "--xds", "x:1", "--node-id", "n"])
    monkeypatch.setenv("MESHPY_APP_PROBES", value)
    from_env = _probes(plain)
    assert from_env is not None and from_env.probes == server.probes
    monkeypatch.delenv("MESHPY_APP_PROBES")
    assert _probes(plain) is None
    assert _parser().parse_args(["run", "-c", "f"]).probe_listen == "0.0.0.0:15021"


def test_exec_probes_are_kept_and_a_pod_with_nothing_to_rewrite_gets_nothing() -> None:
    execs = {"name": "web", "image": "web:1",
             "livenessProbe": {"exec": {"command": ["true"]}, "periodSeconds": 3},
             "readinessProbe": {"httpGet": {"host": "10.0.0.9", "path": "/", "port": 80}}}
    spec = inject(deployment([execs]))
    assert container(spec, "web") == execs  # exec needs no network; a probe of another host, not the pod's
    assert env(spec) is None
    assert excluded_inbound(spec) == "15000"


def test_a_named_port_the_container_does_not_declare_is_an_error_naming_the_probe() -> None:
    web = copy.deepcopy(WEB)
    web["readinessProbe"] = {"tcpSocket": {"port": "metrics"}}
    with pytest.raises(InjectError) as err:
        inject_text(yaml.safe_dump(deployment([web])), NATIVE)
    assert str(err.value) == ("document 1 (Deployment shop): spec.template.spec.containers[0].readinessProbe"
                              ".tcpSocket.port: no port named 'metrics' in container web's ports")


@pytest.mark.parametrize(("probe", "reason"), [
    ({"httpGet": {"port": 0}}, "httpGet.port: 0 is not a port"),
    ({"grpc": {"port": 70000}}, "grpc.port: 70000 is not a port"),
    ({"tcpSocket": {"port": 80}, "timeoutSeconds": 0}, "readinessProbe.timeoutSeconds: 0 is not"),
    ({"httpGet": {"port": 80, "httpHeaders": "X: y"}}, "httpGet.httpHeaders: expected a list"),
])  # fmt: skip
def test_a_bad_probe_is_an_error_naming_it(probe: dict[str, Any], reason: str) -> None:
    web = {"name": "web", "image": "web:1", "readinessProbe": probe}
    with pytest.raises(InjectError, match=reason):
        inject_text(yaml.safe_dump(deployment([web])), NATIVE)


def test_reinjecting_rewrites_nothing_twice() -> None:
    once = inject_text(yaml.safe_dump(deployment(), sort_keys=False), NATIVE)
    assert inject_text(once.text, NATIVE).text == once.text
    # Probes already pointed at the sidecar (its proxy taken out by hand since) are not pointed at it again:
    # the sidecar would check itself.
    containers = yaml.safe_load(once.text)["spec"]["template"]["spec"]["containers"]
    before = copy.deepcopy(containers)
    assert rewrite_probes((f"containers[{i}]", c) for i, c in enumerate(containers)) == {}
    assert containers == before


@pytest.mark.parametrize(("value", "options", "rewritten"), [
    ("false", NATIVE, False),
    ("true", InjectOptions(image="meshpy:9.9.9", rewrite_probes=False), True),
    (None, InjectOptions(image="meshpy:9.9.9", rewrite_probes=False), False),
])  # fmt: skip
def test_the_annotation_and_the_option_turn_it_off_or_on(value: str | None, options: InjectOptions,
                                                         rewritten: bool) -> None:
    annotations = {"sidecar.meshpy.io/rewriteAppHTTPProbers": value} if value is not None else None
    spec = inject(deployment(annotations=annotations), options)
    web = container(spec, "web")
    assert (web == WEB) is not rewritten
    assert (env(spec) is not None) is rewritten
    assert excluded_inbound(spec) == ("15000,15021" if rewritten else "15000")


def test_a_bad_annotation_value_is_an_error() -> None:
    doc = deployment(annotations={"sidecar.meshpy.io/rewriteAppHTTPProbers": "maybe"})
    with pytest.raises(InjectError, match=r"annotations\[sidecar.meshpy.io/rewriteAppHTTPProbers\]"):
        inject_text(yaml.safe_dump(doc), NATIVE)


def test_every_container_gets_its_own_paths_classic_too() -> None:
    other = {"name": "worker", "image": "w:1", "livenessProbe": {"tcpSocket": {"port": 7000}}}
    spec = inject(deployment([WEB, other]), CLASSIC)
    assert container(spec, "worker")["livenessProbe"] == to_sidecar("/app-health/worker/livez")
    probes = env(spec)
    assert probes is not None and sorted(probes) == ["/app-health/web/livez", "/app-health/web/readyz",
                                                     "/app-health/web/startupz", "/app-health/worker/livez"]


@pytest.mark.parametrize(("options", "rewritten"), [(NATIVE, True), (CLASSIC, False)])
def test_the_workloads_own_native_sidecars_when_the_proxy_starts_before_them(options: InjectOptions,
                                                                             rewritten: bool) -> None:
    """A native sidecar of the workload starts after meshpy's in native mode (its inbound traffic is
    captured): its probes go through the proxy. In classic mode it starts before the proxy and the rules:
    pointed at the probe port, its startup probe would wait for a proxy that cannot start before it."""
    logs = {"name": "logs", "image": "l:1", "restartPolicy": "Always",
            "startupProbe": {"tcpSocket": {"port": 5140}}}
    migrate = {"name": "migrate", "image": "m:1"}
    spec = inject(deployment(init=[migrate, logs]), options)
    assert (container(spec, "logs")["startupProbe"] == to_sidecar("/app-health/logs/startupz")) is rewritten
    probes = env(spec)
    assert probes is not None and ("/app-health/logs/startupz" in probes) is rewritten


def test_a_bad_probe_of_a_native_sidecar_is_named_by_its_place_among_the_init_containers() -> None:
    logs = {"name": "logs", "image": "l:1", "restartPolicy": "Always", "livenessProbe": {"grpc": {"port": 0}}}
    doc = deployment(init=[{"name": "migrate", "image": "m:1"}, logs])
    with pytest.raises(InjectError, match=r"initContainers\[1\].livenessProbe.grpc.port: 0 is not a port"):
        inject_text(yaml.safe_dump(doc), NATIVE)


def meshpy_inject(*args: str, stdin: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "meshpy", "inject", *args], input=stdin,
                          capture_output=True, text=True, timeout=60, cwd=ROOT)


def test_cli_rewrites_by_default_and_not_with_no_probe_rewrite() -> None:
    text = yaml.safe_dump(deployment())
    default = meshpy_inject(stdin=text)
    assert default.returncode == 0, default.stderr
    assert container(yaml.safe_load(default.stdout)["spec"]["template"]["spec"], "web") != WEB
    off = meshpy_inject("--no-probe-rewrite", stdin=text)
    assert off.returncode == 0, off.stderr
    spec = yaml.safe_load(off.stdout)["spec"]["template"]["spec"]
    assert container(spec, "web") == WEB and env(spec) is None
