"""A directory of Envoy-native xDS resources written as YAML, for the control plane to serve.

Each `*.yaml` / `*.yml` file holds one resource, a list of them, or several YAML documents. A resource
is proto JSON with an `@type` naming one of the four types in `TYPE_URLS`, exactly what Envoy would
receive, so a file can be checked against Envoy's own docs without a translation step in between.

Errors are collected over the whole directory and raised once: whoever edits the files sees every
mistake in one go instead of fixing them one reload at a time. Each says where it is as
`FILE[:doc N][M]`, where `doc N` (counted from 0) appears only in files with several documents and
`[M]` only for an item of a YAML list.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import yaml
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2

# google.protobuf ships no type stubs here; types-protobuf may come later, hence unused-ignore.
from google.protobuf import json_format  # type: ignore[import-untyped, unused-ignore]
from google.protobuf.message import Message  # type: ignore[import-untyped, unused-ignore]

# The strict loader refuses duplicate keys, which in a resource would silently drop a field. The
# translator's import of the HCM, router and other extension modules is what lets `@type` inside a
# resource resolve; `import_type` covers the extensions it does not import.
from control.cache import CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET
from meshpy.errors import ConfigError
from meshpy.model.load import StrictLoader
from meshpy.model.yaml_values import yaml_kind
from meshpy.xds import envoy_json
from meshpy.xds.deps import any_routes, endpoints_or_none
from meshpy.xds.secrets import SecretMessage, material
from meshpy.xds.translate import (
    MISSING_TYPE,
    cluster_from_proto,
    endpoints_from_cla,
    import_type,
    listener_from_proto,
    route_config_from_proto,
)
from meshpy.xds.translate_base import UNSUPPORTED

__all__ = [
    "CLUSTER",
    "ENDPOINT",
    "LISTENER",
    "ROUTE",
    "SECRET",
    "TYPE_URLS",
    "SourceError",
    "fingerprint",
    "load_envoy_dir",
]

TYPE_URLS = (LISTENER, ROUTE, CLUSTER, ENDPOINT, SECRET)

_CLASSES: dict[str, Any] = {
    LISTENER: listener_pb2.Listener,
    ROUTE: route_pb2.RouteConfiguration,
    CLUSTER: cluster_pb2.Cluster,
    ENDPOINT: endpoint_pb2.ClusterLoadAssignment,
    SECRET: SecretMessage,
}
# A ClusterLoadAssignment is keyed by the cluster it serves; it has no `name` of its own.
_NAME_FIELD = {LISTENER: "name", ROUTE: "name", CLUSTER: "name", ENDPOINT: "cluster_name", SECRET: "name"}
_SUFFIXES = (".yaml", ".yml")

log = logging.getLogger(__name__)
# What the translator says of a feature meshpy lacks ("not supported by meshpy", "only DEFAULT is
# supported by meshpy"), as against a value no proxy takes.
_MESHPY_ONLY = UNSUPPORTED.removeprefix("not ")

Resources = dict[str, dict[str, Message]]
Fingerprint = tuple[tuple[str, int, int], ...]


class SourceError(Exception):
    """Everything wrong with a resource directory, one `location: reason` line each."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = list(errors)
        super().__init__("\n".join(self.errors))


def message_class(type_url: str) -> Any:
    """The generated message class of one of the resource types."""
    return _CLASSES[type_url]


def load_envoy_dir(path: Path) -> Resources:
    """Type URL -> resource name -> parsed message for every YAML file directly in `path`.

    All type URLs are always present as keys, so a caller can serve an empty set for a type
    rather than treat a missing key as "unknown".
    """
    if not path.is_dir():
        raise SourceError([f"{path}: not a directory"])
    result: Resources = {url: {} for url in TYPE_URLS}
    seen: dict[tuple[str, str], str] = {}  # (type URL, name) -> where it was first defined
    errors: list[str] = []
    for file in yaml_files(path):
        parsed_file, file_errors = _file_resources(file)
        errors += file_errors
        for where, url, name, msg in parsed_file:
            first = seen.setdefault((url, name), where)
            if first != where:
                errors.append(f"{where}: duplicate {_short(url)} {name!r} (also in {first})")
                continue
            result[url][name] = msg
    if errors:
        raise SourceError(errors)
    return result


def fingerprint(path: Path) -> Fingerprint:
    """Names, mtimes and sizes of the YAML files: equal fingerprints mean nothing worth reloading.

    A missing directory fingerprints as an empty one; loading it is what reports the problem.
    """
    entries = []
    for file in yaml_files(path):
        try:
            stat = file.stat()
        except OSError:  # removed between listing and stat: the next poll sees the settled state
            continue
        entries.append((file.name, stat.st_mtime_ns, stat.st_size))
    return tuple(entries)


def yaml_files(path: Path) -> list[Path]:
    try:
        return sorted(p for p in path.iterdir() if p.suffix in _SUFFIXES and p.is_file())
    except OSError:
        return []


Parsed = tuple[list[tuple[str, str, str, Message]], list[str]]  # (where, type URL, name, message), errors
# Per file, keyed by its stat: a change of one file re-reads that file alone. YAML and json_format are
# pure Python and were most of a reload (the scale benchmark saw ~0.15 s of a change's CPU there).
_MEMO: dict[Path, tuple[tuple[int, int], Parsed]] = {}
_MEMO_LIMIT = 4096


def _file_resources(file: Path) -> Parsed:
    try:
        st = file.stat()
        stamp = (st.st_mtime_ns, st.st_size)
    except OSError:
        stamp = (0, -1)
    memo = _MEMO.get(file)
    if memo is not None and memo[0] == stamp and stamp[1] >= 0:
        return memo[1]
    errors: list[str] = []
    items = []
    for where, data in _documents(file, errors):
        parsed = _resource(where, data, errors)
        if parsed is not None:
            items.append((where, *parsed))
    if len(_MEMO) >= _MEMO_LIMIT:
        _MEMO.clear()
    _MEMO[file] = (stamp, (items, errors))
    return items, errors


def _documents(file: Path, errors: list[str]) -> list[tuple[str, object]]:
    """Each resource-shaped item in `file` with its location; empty documents are skipped."""
    try:
        docs = list(yaml.load_all(file.read_text(encoding="utf-8"), Loader=StrictLoader))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = f" at line {mark.line + 1}" if mark is not None else ""
        errors.append(f"{file.name}: YAML syntax error{line}: {exc.problem or exc.context}")
        return []
    except (yaml.YAMLError, OSError, UnicodeDecodeError) as exc:
        errors.append(f"{file.name}: cannot read: {exc}")
        return []
    items: list[tuple[str, object]] = []
    for n, doc in enumerate(docs):
        where = f"{file.name}:doc {n}" if len(docs) > 1 else file.name
        if isinstance(doc, list):
            items.extend((f"{where}[{m}]", data) for m, data in enumerate(doc))
        elif doc is not None:
            items.append((where, doc))
    return items


def _resource(where: str, data: object, errors: list[str]) -> tuple[str, str, Message] | None:
    if not isinstance(data, dict):
        errors.append(f"{where}: expected a mapping with an @type, got a {yaml_kind(data)}")
        return None
    body = dict(data)
    url = body.pop("@type", None)
    if url is None:
        errors.append(f"{where}: missing @type")
        return None
    if not isinstance(url, str) or url not in _CLASSES:
        errors.append(f"{where}: unknown @type {url!r}")
        return None
    try:
        msg = _parse(body, _CLASSES[url])
    except json_format.ParseError as exc:
        # Only the first line: the rest is json_format's list of every field the message has.
        first_line = str(exc).partition("\n")[0]
        errors.append(f"{where}: {first_line}")
        return None
    name: str = getattr(msg, _NAME_FIELD[url])
    if not name:
        errors.append(f"{where}: missing {_NAME_FIELD[url]}")
        return None
    wrong = []
    try:
        proxy_check(url, msg)
    except ConfigError as err:
        for issue in err.issues:
            if _MESHPY_ONLY in issue.reason:
                # Envoy proxies take it (a Lua filter, say): served, and said once per file change.
                log.warning("%s: %s (meshpy proxies will refuse it; Envoy ones take it)", where, issue)
            else:
                wrong.append(f"{where}: {issue}")
    if wrong:
        errors.extend(wrong)
        return None
    return url, name, msg


def proxy_check(url: str, msg: Message) -> None:
    """The checks a proxy makes of the resource when it arrives (meshpy's translator, the same code that
    NACKs it), so that a value Envoy's schema lets through but no proxy takes (`connect_timeout: 0s`)
    is refused here, named by file, instead of by every proxy it is pushed to. What only meshpy lacks
    (an extension, a field) is the caller's to weigh: the fleet may be Envoy. References to other
    resources are not resolved: a listener's RDS name or a cluster's EDS name may be served later."""
    if url == LISTENER:
        if msg.HasField("api_listener"):
            return  # a proxyless gRPC client's listener: no proxy serves it, nothing of theirs to check
        listener_from_proto(msg, "", any_routes())
    elif url == CLUSTER:
        cluster_from_proto(msg, "", endpoints_or_none({}))
    elif url == ROUTE:
        route_config_from_proto(msg, "")
    elif url == SECRET:
        material(msg)
    else:
        endpoints_from_cla(msg, "")


def _parse(body: dict[str, Any], cls: Any) -> Message:
    """ParseDict, after Envoy's leniencies (meshpy.xds.envoy_json), importing the module behind an
    `@type` that is not loaded yet and trying again."""
    body, problems = envoy_json.lenient(body, cls.DESCRIPTOR, envoy_json.resolver(import_type))
    if problems:
        raise json_format.ParseError(str(problems[0]))
    tried: set[str] = set()
    while True:
        try:
            return json_format.ParseDict(body, cls())
        except json_format.ParseError as exc:
            missing = MISSING_TYPE.search(str(exc))
            if missing is None or missing.group(1) in tried or not import_type(missing.group(1)):
                raise
            tried.add(missing.group(1))


def _short(url: str) -> str:
    return url.rsplit(".", 1)[-1]
