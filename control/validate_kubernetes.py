"""`meshpy validate --kubernetes FILE`: Kubernetes manifests checked for what `meshpy control
--kubernetes` would make of them: the Services and EndpointSlices in the files become the clusters,
endpoint assignments and outbound listeners the control plane would push (and the inbound listeners of
the workloads of Services annotated security.meshpy.io/mtls), each put through the proxy's own checks;
what it would leave out is said, and so is every object that does not feed it."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from control.cache import CLUSTER, LISTENER
from control.sources.envoy_dir import proxy_check
from control.sources.kubernetes_identity import IDENTITY_ANNOTATION, annotated_accounts
from control.sources.kubernetes_inbound import inbound
from control.sources.kubernetes_meshpy import meshpy_dir_beside_kubernetes
from control.sources.kubernetes_resources import IP_ADDRESS_TYPES, SERVICE_NAME_LABEL, mtls_mode, translate
from control.validate import validate_dir
from meshpy.errors import ConfigError

_FED = ("Service", "EndpointSlice")
_WORKLOADS = ("Deployment", "StatefulSet", "DaemonSet", "Pod")
_DIR_FLAGS = {"--meshpy-dir": True, "--envoy-dir": False}


def _control_dirs(where: str, obj: dict[str, Any], maps: dict[tuple[str, str], dict[str, Any]], domain: str,
                  notes: list[str]) -> bool:
    """A `meshpy control` container's --meshpy-dir / --envoy-dir, when a ConfigMap in the files is mounted
    there: its files checked as the control plane will load them. Other workloads are only noted."""
    namespace = str((obj.get("metadata") or {}).get("namespace") or "default")
    spec = obj.get("spec") or {}
    pod = spec if obj.get("kind") == "Pod" else (spec.get("template") or {}).get("spec") or {}
    volumes = {v.get("name"): v for v in pod.get("volumes") or () if isinstance(v, dict)}
    ok, checked = True, False
    for container in pod.get("containers") or ():
        args = [str(a) for a in [*(container.get("command") or ()), *(container.get("args") or ())]]
        if "control" not in args:
            continue
        for flag, meshpy_format in _DIR_FLAGS.items():
            if flag not in args or args.index(flag) + 1 >= len(args):
                continue
            directory = args[args.index(flag) + 1].rstrip("/")
            mounts = container.get("volumeMounts") or ()
            mount = next((m for m in mounts if str(m.get("mountPath", "")).rstrip("/") == directory), None)
            source = (volumes.get(mount.get("name")) or {}).get("configMap") if mount else None
            map_name = str((source or {}).get("name"))
            data = maps.get((namespace, map_name)) if source else None
            if data is None:
                notes.append(f"{where}: {flag} {directory} is not a ConfigMap in these files: not checked")
                continue
            with tempfile.TemporaryDirectory() as tmp:
                for key, text in (data.get("data") or {}).items():
                    Path(tmp, str(key)).write_text(str(text), encoding="utf-8")
                beside = meshpy_format and "--kubernetes" in args  # routes may name the Services' clusters
                loader = meshpy_dir_beside_kubernetes(domain) if beside else None
                label = f"{where}: ConfigMap {namespace}/{map_name} ({flag} {directory})"
                ok = validate_dir(tmp, meshpy_format, loader, label) and ok
                checked = True
    if not checked:
        notes.append(_not_read(where, obj))
    return ok


def _not_read(where: str, obj: dict[str, Any]) -> str:
    return (f"{where}: {obj.get('kind')} {(obj.get('metadata') or {}).get('name', '')}: not read by the "
            f"control plane (it reads {' and '.join(_FED)})")


def _objects(path: str, problems: list[str]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, object) for every object in the file, a `kind: List` opened."""
    try:
        with open(path, encoding="utf-8") as f:
            docs = list(yaml.safe_load_all(f))
    except (OSError, UnicodeDecodeError) as err:
        problems.append(f"{path}: cannot read: {err}")
        return
    except yaml.YAMLError as err:
        problems.append(f"{path}: YAML syntax error: {err}")
        return
    for n, doc in enumerate(docs):
        where = f"{path}:doc {n}" if len(docs) > 1 else path
        if doc is None:
            continue
        if not isinstance(doc, dict) or "kind" not in doc:
            problems.append(f"{where}: not a Kubernetes object (no kind)")
            continue
        if str(doc["kind"]).endswith("List") and isinstance(doc.get("items"), list):
            for m, obj in enumerate(doc["items"]):
                if isinstance(obj, dict):
                    yield f"{where}.items[{m}]", obj
            continue
        yield where, doc


def _service_problems(where: str, svc: dict[str, Any]) -> list[str]:
    meta, spec = svc.get("metadata") or {}, svc.get("spec") or {}
    out = [f"{where}: metadata.{key} is required" for key in ("name",) if not meta.get(key)]
    for i, port in enumerate(spec.get("ports") or ()):
        number = port.get("port") if isinstance(port, dict) else None
        if not isinstance(number, int) or not 1 <= number <= 65535:
            out.append(f"{where}: spec.ports[{i}].port: must be a port number, got {number!r}")
    return out


def validate_kubernetes(files: list[str], domain: str = "cluster.local") -> bool:
    """Prints what it found; True when every Service and EndpointSlice would be served as written."""
    problems: list[str] = []
    notes: list[str] = []
    services: list[dict[str, Any]] = []
    slices: list[dict[str, Any]] = []
    maps: dict[tuple[str, str], dict[str, Any]] = {}
    workloads: list[tuple[str, dict[str, Any]]] = []
    for path in files:
        for where, obj in _objects(path, problems):
            kind = obj.get("kind")
            meta = obj.get("metadata") or {}
            if kind == "ConfigMap":
                maps[(str(meta.get("namespace") or "default"), str(meta.get("name")))] = obj
            if kind in _WORKLOADS:
                workloads.append((where, obj))
            if kind == "Service":
                problems += _service_problems(where, obj)
                if not (obj.get("spec") or {}).get("clusterIP"):
                    notes.append(f"{where}: no spec.clusterIP yet (Kubernetes assigns one): its outbound "
                                 "listeners come with it")
                obj.setdefault("metadata", {}).setdefault("namespace", "default")
                services.append(obj)
                if mtls_mode(obj, []) in ("strict", "permissive") and annotated_accounts(obj) is None:
                    notes.append(f"{where}: its callers will expect the service accounts of its pods, which "
                                 f"only the API knows: checked here without ({IDENTITY_ANNOTATION} names "
                                 "them instead)")
            elif kind == "EndpointSlice":
                meta = obj.get("metadata") or {}
                if not (meta.get("labels") or {}).get(SERVICE_NAME_LABEL):
                    notes.append(f"{where}: no {SERVICE_NAME_LABEL} label: belongs to no Service, not served")
                elif obj.get("addressType") not in IP_ADDRESS_TYPES:
                    notes.append(f"{where}: addressType {obj.get('addressType')!r}: only IPv4 and IPv6 "
                                 "endpoints are served")
                obj.setdefault("metadata", {}).setdefault("namespace", "default")
                slices.append(obj)
            elif kind not in ("ConfigMap", *_WORKLOADS):
                notes.append(_not_read(where, obj))
    result = translate(services, slices, domain)
    found = inbound(services, slices)
    result.resources[CLUSTER].update(found.clusters)
    for selector, generated in found.workloads.items():
        for name, msg in generated[LISTENER].items():
            result.resources[LISTENER][f"{name} ({selector.describe()})"] = msg
    notes += (*result.skipped, *found.skipped)
    for url, named in result.resources.items():
        for name, msg in named.items():
            try:
                proxy_check(url, msg)
            except ConfigError as err:
                problems += [f"{url.rsplit('.', 1)[-1]} {name}: {issue}" for issue in err.issues]
    ok_dirs = all(_control_dirs(where, obj, maps, domain, notes) for where, obj in workloads)
    for line in notes:
        print(f"note: {line}")
    for line in problems:
        print(line)
    if problems or not ok_dirs:
        return False
    counts = {url.rsplit(".", 1)[-1]: len(named) for url, named in result.resources.items()}
    made = ", ".join(f"{n} {kind}s" for kind, n in counts.items())
    print(f"{', '.join(files)}: ok ({len(services)} Services, {len(slices)} EndpointSlices -> {made})")
    return True
