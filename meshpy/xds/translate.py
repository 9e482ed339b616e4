"""Envoy v3 protos -> the meshpy config model.

Two callers: `load_bootstrap` reads a static Envoy bootstrap (YAML or JSON already parsed into a
mapping), and the xDS client translates resources one at a time with the `*_from_proto` functions.
Either way the rule is the same: an Envoy field meshpy does not act on is a `ConfigError` naming the
field by its path, never silently dropped (see `translate_base`). Envoy's own defaults apply to
everything left unset, so a bootstrap behaves the same under Envoy and under meshpy.

The work is split by resource: `translate_listeners` (listener, HTTP connection manager, TCP proxy,
access logs), `translate_routes` and `translate_matchers` (route configuration), `translate_clusters`
(clusters and endpoints).
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import pkgutil
import re
from collections.abc import Mapping
from typing import Any

from envoy.config.bootstrap.v3 import bootstrap_pb2

# google.protobuf ships no type stubs here; types-protobuf may come later, hence unused-ignore.
from google.protobuf import descriptor_pool, json_format  # type: ignore[import-untyped, unused-ignore]

from meshpy.errors import ConfigError, ConfigIssue
from meshpy.model.endpoints import Locality
from meshpy.model.limits import NO_OVERLOAD
from meshpy.model.routes import RouteConfig
from meshpy.model.types import Admin, Config, Endpoint, Listener
from meshpy.model.types import Cluster as ClusterModel
from meshpy.xds import (
    bootstrap,
    deps,
    envoy_json,
    translate_clusters,
    translate_limits,
    translate_listeners,
    translate_process,
    translate_routes,
    translate_runtime,
)
from meshpy.xds.config_sources import Fetch
from meshpy.xds.translate_access_log import admin_access_logs
from meshpy.xds.translate_base import Issues, child, item, socket_address

__all__ = [
    "cluster_from_proto",
    "config_from_bootstrap",
    "endpoints_from_cla",
    "listener_from_proto",
    "load_bootstrap",
    "parse_bootstrap",
    "route_config_from_proto",
]


def load_bootstrap(data: Mapping[str, Any]) -> Config:
    """An Envoy v3 bootstrap (as parsed from YAML or JSON) as a checked meshpy Config."""
    return config_from_bootstrap(parse_bootstrap(data))


def listener_from_proto(
    msg: Any, path: str = "", routes: Mapping[str, RouteConfig] | None = None
) -> Listener:
    """An envoy.config.listener.v3.Listener. `routes` (by name) resolves an HCM that uses RDS."""
    issues = Issues()
    result = translate_listeners.listener(issues, msg, path, routes)
    issues.raise_if_any()
    return result


def cluster_from_proto(
    msg: Any, path: str = "", endpoints: Mapping[str, tuple[Endpoint, ...]] | None = None
) -> ClusterModel:
    """An envoy.config.cluster.v3.Cluster. `endpoints` (by EDS service name) resolves an EDS cluster."""
    issues = Issues()
    result = translate_clusters.cluster(issues, msg, path, endpoints)
    issues.raise_if_any()
    return result


def route_config_from_proto(msg: Any, path: str = "") -> RouteConfig:
    """An envoy.config.route.v3.RouteConfiguration."""
    issues = Issues()
    result = translate_routes.route_config(issues, msg, path)
    issues.raise_if_any()
    return result


def endpoints_from_cla(cla: Any, path: str = "") -> tuple[Endpoint, ...]:
    """The endpoints of an envoy.config.endpoint.v3.ClusterLoadAssignment."""
    issues = Issues()
    result = translate_clusters.endpoints_from(issues, cla, path)
    issues.raise_if_any()
    return result


_LISTENER_URL = "type.googleapis.com/envoy.config.listener.v3.Listener"
_CLUSTER_URL = "type.googleapis.com/envoy.config.cluster.v3.Cluster"

# Parsing -------------------------------------------------------------------------------------------

MISSING_TYPE = re.compile(r"Can not find message descriptor by type_url: (\S+?)(?: at |\.*$)")
_NO_FIELD = re.compile(r'Message type "([\w.]+)" has no field named "([^"]+)"')
_FAILED_FIELD = re.compile(r"Failed to parse (\w+) field: ")
_TYPE_NAME = re.compile(r"[a-z_][a-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)+")
_IMPORT_ROOTS = ("envoy.", "xds.", "udpa.", "google.")


def parse_bootstrap(data: Mapping[str, Any]) -> Any:
    """The bootstrap as an envoy.config.bootstrap.v3.Bootstrap, or ConfigError with the bad path.

    json_format resolves `@type` only among message modules already imported. The ones meshpy
    supports are imported with the translator modules; for any other type the package that would
    define it is imported on demand, so that an unsupported extension is reported as "not supported
    by meshpy" at its path rather than as an unknown type.
    """
    if not isinstance(data, Mapping):
        raise ConfigError.at("", f"an Envoy bootstrap must be a mapping, got {type(data).__name__}")
    bad_any = _bad_any(data)
    if bad_any is not None:
        raise ConfigError([bad_any])
    # Envoy's leniencies (lower-case enums, one value for a list, ...) first, and values of the wrong
    # kind said in meshpy's words
    data, problems = envoy_json.lenient(data, bootstrap_pb2.Bootstrap.DESCRIPTOR,
                                        envoy_json.resolver(import_type))
    if problems:
        raise ConfigError(problems)
    tried: set[str] = set()
    while True:
        try:
            return json_format.ParseDict(data, bootstrap_pb2.Bootstrap())
        except (AttributeError, KeyError, TypeError, IndexError, RecursionError) as exc:
            # json_format's own bugs on shapes it does not expect (found by fuzzing); _bad_any catches
            # the known ones with their path, this the rest.
            reason = f"cannot be read as an Envoy bootstrap ({type(exc).__name__}: {exc})"
            raise ConfigError.at("", reason) from None
        except json_format.ParseError as exc:
            text = str(exc)
            missing = MISSING_TYPE.search(text)
            if missing is None or missing.group(1) in tried or not import_type(missing.group(1)):
                raise ConfigError([_parse_issue(text)]) from None
            tried.add(missing.group(1))


# Well-known types that json_format reads from an Any's `value` key (the others' fields sit beside @type).
_WELL_KNOWN = frozenset(f"google.protobuf.{n}" for n in (
    "Any", "Duration", "FieldMask", "ListValue", "Struct", "Timestamp", "Value", "BoolValue", "BytesValue",
    "DoubleValue", "FloatValue", "Int32Value", "Int64Value", "StringValue", "UInt32Value", "UInt64Value"))


def _bad_any(data: Any) -> ConfigIssue | None:
    """The first Any json_format would fail on with an exception other than ParseError: an `@type`
    that is not a string, or a well-known type without its `value`. Walked with a stack and each
    container once: YAML aliases can share a node many times or put one inside itself (the loader
    refuses that, meshpy.model.load.check_aliases, but this may be called on any mapping)."""
    stack: list[tuple[Any, str]] = [(data, "")]
    seen: set[int] = set()
    while stack:
        node, path = stack.pop()
        if not isinstance(node, Mapping | list) or id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, list):
            stack.extend((v, item(path, i)) for i, v in reversed(list(enumerate(node))))
            continue
        if "@type" in node:
            url = node["@type"]
            if not isinstance(url, str):
                return ConfigIssue(child(path, "@type"), f"must be a type URL, got a {type(url).__name__}")
            name = url.rsplit("/", 1)[-1]
            if name in _WELL_KNOWN and "value" not in node:
                return ConfigIssue(path, f"an Any holding {name} needs its JSON under `value`")
        stack.extend((v, child(path, str(k))) for k, v in reversed(list(node.items())))
    return None


def import_type(type_url: str) -> bool:
    """Import the package of generated modules that should define `type_url`; True if it now resolves."""
    full_name = type_url.rsplit("/", 1)[-1]
    if not _TYPE_NAME.fullmatch(full_name) or not full_name.startswith(_IMPORT_ROOTS):
        return False
    # The package is the dotted name up to the message name (the first part in CamelCase).
    parts = full_name.split(".")
    package = ".".join(parts[: next((i for i, p in enumerate(parts) if p[:1].isupper()), 0)])
    if not package:
        return False
    try:
        module = importlib.import_module(package)
        for info in pkgutil.iter_modules(getattr(module, "__path__", [])):
            if info.name.endswith("_pb2"):
                importlib.import_module(f"{package}.{info.name}")
        descriptor_pool.Default().FindMessageTypeByName(full_name)
    except (ImportError, KeyError):
        return False
    return True


def _parse_issue(text: str) -> ConfigIssue:
    """A json_format error rewritten as `path: reason` with Envoy's YAML path.

    json_format says `Failed to parse static_resources field: ... <reason> at "Bootstrap.<path>".`,
    sometimes followed by a list of the fields that do exist. Some errors (a bad scalar) come without
    the `at` part; then the chain of field names is the best path there is (it lacks list indexes)."""
    first = text.split("\n", 1)[0]
    chain = _FAILED_FIELD.findall(first)
    first = _FAILED_FIELD.sub("", first)
    reason, at, where = first.rpartition(" at ")
    if at:
        where = where.strip().strip('".').removeprefix("Bootstrap").strip(".")
    else:
        reason, where = first, ".".join(chain)
    reason = reason.strip().rstrip(".")
    no_field = _NO_FIELD.search(reason)
    if no_field is not None:
        message, field = no_field.groups()
        return ConfigIssue(child(where, field), f"unknown field{_suggest(message, field)} in {message}")
    missing = MISSING_TYPE.search(first)
    if missing is not None:
        return ConfigIssue(where, f"unknown @type {missing.group(1)}")
    return ConfigIssue(where, reason)


def _suggest(message: str, field: str) -> str:
    try:
        known = list(descriptor_pool.Default().FindMessageTypeByName(message).fields_by_name)
    except KeyError:
        return ""
    close = difflib.get_close_matches(field, known, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


# Translating the bootstrap --------------------------------------------------------------------------

# `node` identifies this proxy to a control plane: nothing to act on in a static bootstrap.
_BOOTSTRAP = frozenset({"admin", "static_resources", "dynamic_resources", "node", "overload_manager",
                        "layered_runtime", *translate_process.FIELDS})


def config_from_bootstrap(msg: Any) -> Config:
    """A parsed Bootstrap as a Config, with every issue (and every cross-reference issue) reported."""
    issues = Issues()
    issues.fields(msg, "", _BOOTSTRAP)
    static = msg.static_resources
    issues.fields(static, "static_resources", {"listeners", "clusters", "secrets"})
    secrets = {secret.name: secret for secret in static.secrets}  # TLS material named by SDS configs
    listeners_path = "static_resources.listeners"
    clusters_path = "static_resources.clusters"
    # Static resources that fetch their routes, endpoints or secrets are held by the xDS client until
    # those arrive; where each comes from is read first, as it may set a cluster aside for xDS.
    servers = bootstrap.servers_of(msg)
    xds = bootstrap.xds_source(issues, msg, servers)
    waiting: dict[tuple[str, int], list[Fetch]] = {}
    for i, listener in enumerate(static.listeners):
        refs = [*deps.rds_refs(listener), *deps.sds_refs(listener)]
        if refs:
            found = deps.fetches(refs, servers, None, issues, item(listeners_path, i))
            waiting[(_LISTENER_URL, i)] = [f for _, f in found]
    for i, cluster in enumerate(static.clusters):
        eds = deps.eds_ref(cluster)
        refs = [*([eds] if eds is not None else []), *deps.sds_refs(cluster)]
        if refs:
            found = deps.fetches(refs, servers, None, issues, item(clusters_path, i))
            waiting[(_CLUSTER_URL, i)] = [f for _, f in found]
    if waiting:
        xds = bootstrap.with_held(issues, msg, xds, [f for fs in waiting.values() for f in fs])
    listeners, clusters, held = [], [], []
    for i, listener in enumerate(static.listeners):
        at = item(listeners_path, i)
        if (_LISTENER_URL, i) in waiting:
            # Checked now, built by the xDS client once what it names arrives.
            translate_listeners.listener(issues, listener, at, deps.any_routes(), secrets)
            held.append((_LISTENER_URL, json_format.MessageToJson(listener, indent=None)))
        else:
            listeners.append(translate_listeners.listener(issues, listener, at, secrets=secrets))
    for i, cluster in enumerate(static.clusters):
        if cluster.name in servers.named:
            continue  # it carries xDS (read by meshpy.xds.xds_clusters), not the data plane's traffic
        at = item(clusters_path, i)
        if (_CLUSTER_URL, i) in waiting:
            translate_clusters.cluster(issues, cluster, at, deps.endpoints_or_none({}))
            held.append((_CLUSTER_URL, json_format.MessageToJson(cluster, indent=None)))
        else:
            clusters.append(translate_clusters.cluster(issues, cluster, at, secrets=secrets))
    if xds is not None:
        # Dynamic resources may name any static cluster that can carry xDS; static ones, those named.
        xds = dataclasses.replace(xds, static_resources=tuple(held),
                                  servers=servers.candidates(every=xds.lds or xds.cds))
    config = Config(
        listeners=tuple(listeners),
        clusters=tuple(clusters),
        admin=_admin(issues, msg),
        overload=translate_limits.overload_manager(issues, msg.overload_manager)
        if msg.HasField("overload_manager") else NO_OVERLOAD,
        source_format="envoy",
        xds=xds,
        runtime=translate_runtime.layered_runtime(issues, msg),
        process=translate_process.process_options(issues, msg),
        service_node=msg.node.id,
        service_cluster=msg.node.cluster,
        service_locality=Locality(region=msg.node.locality.region, zone=msg.node.locality.zone,
                                  sub_zone=msg.node.locality.sub_zone),
    )
    _check_local_cluster(issues, msg, clusters)
    issues.raise_if_any()
    # Lazy: the checks live with the model and are shared by every loader.
    from meshpy.model.check import check_references

    # With xDS, a static route may name a cluster that CDS will bring (Envoy allows it), or one held
    # until its endpoints or secrets arrive.
    waits = {c.name for i, c in enumerate(static.clusters) if (_CLUSTER_URL, i) in waiting}
    problems = check_references(config, clusters_required=xds is None or not xds.cds,
                                external=waits.__contains__)
    if problems:
        raise ConfigError(ConfigIssue(_envoy_path(p.path, config), p.reason) for p in problems)
    return config


def _check_local_cluster(issues: Issues, msg: Any, clusters: list[ClusterModel]) -> None:
    """Envoy's checks of cluster_manager.local_cluster_name: a static cluster, of one priority (its
    endpoints are the proxy's peers, which zone-aware routing compares with the upstream's)."""
    name = msg.cluster_manager.local_cluster_name
    if not name:
        return
    if all(c.name != name for c in msg.static_resources.clusters):
        issues.add("cluster_manager.local_cluster_name", f"local cluster {name!r} must be defined")
    elif any(e.group.priority for c in clusters if c.name == name for e in c.endpoints):
        issues.add("cluster_manager.local_cluster_name", f"unexpected non-zero priority for local cluster "
                                                         f"{name!r}")


def _admin(issues: Issues, msg: Any) -> Admin:
    if not msg.HasField("admin"):
        return Admin(address=None)
    admin = msg.admin
    # profile_path: where Envoy's /cpuprofiler and /heapprofiler write; meshpy's admin has neither.
    issues.fields(admin, "admin", {"address", "access_log_path", "access_log", "profile_path"})
    logs = admin_access_logs(issues, admin)
    if not admin.HasField("address"):
        return Admin(address=None)
    return Admin(address=socket_address(issues, admin.address, "admin.address"), access_logs=logs)


# check_references speaks in model paths; these rewrite them to where the bootstrap says the same
# thing. A chain has one filter; a listener has one chain, or (sniffing) an HTTP chain and a TCP one.
_FILTER = "filter_chains[0].filters[0].typed_config"
_FALLBACK = re.compile(r"^listeners\[(\d+)\]\.tcp\b")
_MODEL_TO_ENVOY = [
    (
        re.compile(r"^listeners\[(\d+)\]\.virtual_hosts"),
        rf"listeners[\1].{_FILTER}.route_config.virtual_hosts",
    ),
    (re.compile(r"^listeners\[(\d+)\]\.(?:tcp|http)\b"), rf"listeners[\1].{_FILTER}"),
    (re.compile(r"^listeners\[(\d+)\]\.bind\b"), r"listeners[\1].bind_to_port"),
    (re.compile(r"\.routes\[(\d+)\]\.cluster$"), r".routes[\1].route.cluster"),
    (
        re.compile(r"\.routes\[(\d+)\]\.weighted\[(\d+)\]"),
        r".routes[\1].route.weighted_clusters.clusters[\2].name",
    ),
    (re.compile(r"\.routes\[(\d+)\]\.mirrors\["), r".routes[\1].route.request_mirror_policies["),
    (re.compile(r"^(listeners|clusters)\["), r"static_resources.\1["),
]


def _envoy_path(model_path: str, config: Config | None = None) -> str:
    fallback = _FALLBACK.match(model_path)
    if fallback is not None and config is not None:
        i = int(fallback.group(1))
        if i < len(config.listeners) and config.listeners[i].http is not None:
            # An http listener's tcp options are its TCP chain (written as default_filter_chain).
            rest = model_path[fallback.end():]
            return f"static_resources.listeners[{i}].default_filter_chain.filters[0].typed_config{rest}"
    for pattern, replacement in _MODEL_TO_ENVOY:
        model_path = pattern.sub(replacement, model_path)
    return model_path
