"""The app's kubelet probes, pointed at the sidecar at injection, as Istio's probe rewrite does.

Under `security.meshpy.io/mtls: strict` every connection into the pod goes to the sidecar, which asks for
a client certificate: the kubelet's plaintext probes of the app's ports would all fail. So each httpGet,
tcpSocket and grpc probe of an app container becomes an httpGet to the sidecar's probe port
(`/app-health/<container>/<livez|readyz|startupz>`), which the rules leave uncaptured; the original goes
to the proxy in an environment variable (JSON, keyed by that path), and the proxy makes the same check
of the app from inside the pod (meshpy/sidecar/probes.py). Exec probes need no network and are kept.

The JSON names the port by number, so the proxy needs nothing of the pod spec:
`{"/app-health/web/readyz": {"httpGet": {"path": "/", "port": 8080, "scheme": "HTTP"}, "timeoutSeconds": 1}}`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

PROBE_PORT = 15021  # above 1024, so that the proxy's unprivileged UID may bind it (Istio's is 15020)
PROBES_ENV = "MESHPY_APP_PROBES"
PATH_PREFIX = "/app-health/"
KINDS = {"livenessProbe": "livez", "readinessProbe": "readyz", "startupProbe": "startupz"}
HANDLERS = ("httpGet", "tcpSocket", "grpc")
DEFAULT_TIMEOUT = 1  # seconds: the kubelet's own default for timeoutSeconds


def probe_path(container: str, kind: str) -> str:
    return f"{PATH_PREFIX}{container}/{KINDS[kind]}"


def rewrite_probes(containers: Iterable[tuple[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Point the probes of `containers` ((its path for messages, the container) pairs) at the sidecar, in
    place; the originals, keyed by their new path. Raises ValueError naming the probe's path (a named port
    that the container does not declare, a port that is not one)."""
    originals: dict[str, dict[str, Any]] = {}
    for where, container in containers:
        name = str(container.get("name", ""))
        for kind in KINDS:
            probe = container.get(kind)
            at = f"{where}.{kind}"
            if probe is None:
                continue
            if not isinstance(probe, dict):
                raise ValueError(f"{at}: expected a mapping, got {type(probe).__name__}")
            handler = next((h for h in HANDLERS if h in probe), None)
            if handler is None or _rewritten(probe) or _elsewhere(probe[handler]):
                continue
            original = _original(container, handler, probe, at)
            path = probe_path(name, kind)
            originals[path] = original
            # In the handler's place, and every other field (the timing ones, a probe-level
            # terminationGracePeriodSeconds) kept as it was.
            rewritten: dict[str, Any] = {}
            for key, value in probe.items():
                if key == handler:
                    rewritten["httpGet"] = {"path": path, "port": PROBE_PORT, "scheme": "HTTP"}
                else:
                    rewritten[key] = value
            container[kind] = rewritten
    return originals


def probes_env(originals: dict[str, dict[str, Any]]) -> dict[str, str]:
    """The proxy container's environment entry for the originals."""
    return {"name": PROBES_ENV, "value": json.dumps(originals, separators=(",", ":"))}


def _rewritten(probe: dict[str, Any]) -> bool:
    """Already pointed at the sidecar (a manifest injected before, its proxy removed by hand): rewriting it
    again would point the sidecar at itself."""
    get = probe.get("httpGet")
    return (isinstance(get, dict) and get.get("port") == PROBE_PORT
            and str(get.get("path", "")).startswith(PATH_PREFIX))


def _elsewhere(handler: Any) -> bool:
    """A probe of another host than the pod (`host:`): the pod's rules never see it, so it is kept."""
    return isinstance(handler, dict) and bool(handler.get("host"))


def _original(container: dict[str, Any], handler: str, probe: dict[str, Any],
              probe_at: str) -> dict[str, Any]:
    """What the proxy needs of the probe: the handler with its port as a number, and the timeout."""
    spec, at = probe[handler], f"{probe_at}.{handler}"
    if not isinstance(spec, dict):
        raise ValueError(f"{at}: expected a mapping, got {type(spec).__name__}")
    port = _port(container, spec.get("port"), f"{at}.port")
    kept: dict[str, Any]
    if handler == "httpGet":
        kept = {"path": str(spec.get("path") or "/"), "port": port, "scheme": str(spec.get("scheme", "HTTP"))}
        headers = spec.get("httpHeaders")
        if headers:
            if not isinstance(headers, list) or not all(
                    isinstance(h, dict) and isinstance(h.get("name"), str) for h in headers):
                raise ValueError(f"{at}.httpHeaders: expected a list of {{name, value}}")
            kept["httpHeaders"] = [{"name": h["name"], "value": str(h.get("value", ""))} for h in headers]
    elif handler == "tcpSocket":
        kept = {"port": port}
    else:
        kept = {"port": port, **({"service": str(spec["service"])} if spec.get("service") else {})}
    timeout = probe.get("timeoutSeconds", DEFAULT_TIMEOUT)
    if isinstance(timeout, bool) or not isinstance(timeout, int) or timeout < 1:
        raise ValueError(f"{probe_at}.timeoutSeconds: {timeout!r} is not a number of seconds (1 or more)")
    return {handler: kept, "timeoutSeconds": timeout}


def _port(container: dict[str, Any], value: Any, at: str) -> int:
    """A probe's port as a number: a named one is the container's containerPort of that name, as the
    kubelet resolves it."""
    if isinstance(value, str) and not value.isdigit():
        ports = container.get("ports")
        for port in ports if isinstance(ports, list) else []:
            if isinstance(port, dict) and port.get("name") == value:
                value = port.get("containerPort")
                break
        else:
            raise ValueError(f"{at}: no port named {value!r} in container {container.get('name')}'s ports")
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 65536:
        raise ValueError(f"{at}: {value!r} is not a port (1-65535, or the name of a containerPort)")
    return value
