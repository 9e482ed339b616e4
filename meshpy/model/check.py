"""Cross-reference checks every loader runs on a finished model (meshpy YAML, Envoy bootstrap, xDS).

A loader validates each value where it reads it; what can only be seen with the whole config in hand
lives here, once: routes naming clusters that do not exist, names that must be unique, two sockets
that would bind the same address. Paths are model paths (`listeners[0].virtual_hosts[1].routes[2]
.cluster`); a loader whose format nests differently maps them back to what the author wrote.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable

from meshpy.errors import ConfigIssue
from meshpy.model.routes import ForwardAction, RouteConfig
from meshpy.model.types import Address, Config, Listener


class _Clusters(list[str]):
    """The clusters a route may name: those defined, and any name `external` accepts."""

    def __init__(self, names: Iterable[str], external: Callable[[str], object] | None) -> None:
        super().__init__(names)
        self.external = external

    def __contains__(self, name: object) -> bool:
        if super().__contains__(name):
            return True
        return self.external is not None and isinstance(name, str) and bool(self.external(name))


def check_references(config: Config, clusters_required: bool = True,
                     external: Callable[[str], object] | None = None) -> list[ConfigIssue]:
    """Every cross-reference problem in `config`, in model order; empty when the config is consistent.

    `clusters_required=False` is the xDS rule (Envoy's): a route may name a cluster that has not
    arrived yet, and answers 503 until it does. `external` accepts cluster names defined elsewhere
    (the control plane's Kubernetes source, beside a directory of YAML naming its clusters)."""
    issues: list[ConfigIssue] = []
    issues += _duplicates(((f"listeners[{i}]", x.name) for i, x in enumerate(config.listeners)), "listener")
    issues += _duplicates(((f"clusters[{i}]", x.name) for i, x in enumerate(config.clusters)), "cluster")
    issues += _address_clashes(config)
    known = _Clusters((c.name for c in config.clusters), external) if clusters_required else None
    for i, listener in enumerate(config.listeners):
        issues += _listener(listener, f"listeners[{i}]", known)
    return issues


def _duplicates(named: Iterable[tuple[str, str]], what: str) -> list[ConfigIssue]:
    first: dict[str, str] = {}
    issues: list[ConfigIssue] = []
    for path, name in named:
        if name in first:
            issues.append(ConfigIssue(f"{path}.name", f"duplicate {what} name {name!r} (also {first[name]})"))
        else:
            first[name] = path
    return issues


def _address_clashes(config: Config) -> list[ConfigIssue]:
    # Only identical host:port pairs are flagged: 0.0.0.0:80 beside 127.0.0.1:80 is legal (the more
    # specific socket wins), and port 0 asks the kernel for a fresh port every time. A listener without
    # a socket of its own (bind off) is keyed apart: it may share its address with a bound one (it only
    # serves connections handed to it), not with another unbound one, whatever their directions (Envoy
    # refuses two listeners at one address, and the config must carry to it).
    taken: dict[tuple[bool, Address], str] = {}
    issues: list[ConfigIssue] = []
    sockets = [
        (f"listeners[{i}].address", listener.bind, listener.address, f"listeners[{i}] ({listener.name})")
        for i, listener in enumerate(config.listeners)
    ]
    if config.admin.address is not None:
        sockets.append(("admin.address", True, config.admin.address, "admin"))
    for path, bound, address, owner in sockets:
        if address.port == 0 and not address.path:  # (a Unix socket's port is always 0)
            continue
        if address.mode:  # one path is one socket, whatever mode its file gets
            address = Address(host="", port=0, path=address.path)
        if (bound, address) in taken:
            issues.append(ConfigIssue(path, f"{address} is already used by {taken[bound, address]}"))
        else:
            taken[bound, address] = owner
    return issues


def _listener(listener: Listener, path: str, known: list[str] | None) -> list[ConfigIssue]:
    issues: list[ConfigIssue] = []
    if listener.kind == "tcp":
        if listener.tcp is None:
            return [ConfigIssue(path, "a tcp listener needs tcp options")]
        issues += _cluster_ref(listener.tcp.cluster, f"{path}.tcp.cluster", known)
    if listener.kind == "http":
        if listener.http is None:
            return [ConfigIssue(path, "an http listener needs http options")]
        issues += _route_config(listener.http.route_config, path, known)
        if listener.tcp is not None:  # the fallback for bytes that are not HTTP
            issues += _cluster_ref(listener.tcp.cluster, f"{path}.tcp.cluster", known)
    if listener.original_destination and not listener.bind:
        issues.append(ConfigIssue(f"{path}.bind", "a listener that hands connections on by their original "
                                  "destination needs its own socket"))
    return issues


def _route_config(route_config: RouteConfig, path: str, known: list[str] | None) -> list[ConfigIssue]:
    issues = _duplicates(
        ((f"{path}.virtual_hosts[{j}]", vh.name) for j, vh in enumerate(route_config.virtual_hosts)),
        "virtual host",
    )
    # Envoy refuses a domain listed by two virtual hosts: which one wins would depend on order.
    domain_owner: dict[str, int] = {}
    for j, vhost in enumerate(route_config.virtual_hosts):
        vh_path = f"{path}.virtual_hosts[{j}]"
        for k, domain in enumerate(vhost.domains):
            key = domain.lower()
            if key in domain_owner and domain_owner[key] != j:
                where = f"{path}.virtual_hosts[{domain_owner[key]}]"
                issues.append(ConfigIssue(f"{vh_path}.domains[{k}]", f"domain {domain!r} is also in {where}"))
            domain_owner.setdefault(key, j)
        for k, route in enumerate(vhost.routes):
            action = route.action
            if not isinstance(action, ForwardAction):
                continue
            route_path = f"{vh_path}.routes[{k}]"
            if action.cluster is not None:
                issues += _cluster_ref(action.cluster, f"{route_path}.cluster", known)
            for m, weighted in enumerate(action.weighted):
                issues += _cluster_ref(weighted.name, f"{route_path}.weighted[{m}]", known)
            for m, mirror in enumerate(action.mirrors):
                if mirror.cluster:  # (one a header names is looked up per request: 503 if unknown)
                    issues += _cluster_ref(mirror.cluster, f"{route_path}.mirrors[{m}].cluster", known)
            # (a plugin's clusters are named per request: an unknown one is answered 503, as in Envoy)
            given = (action.cluster is not None, bool(action.weighted), action.cluster_plugin is not None)
            if sum(given) != 1:
                reason = "a forwarding route needs one cluster or a weighted split"
                issues.append(ConfigIssue(route_path, reason))
    return issues


def _cluster_ref(name: str, path: str, known: list[str] | None) -> list[ConfigIssue]:
    if known is None or name in known:
        return []
    if not known:
        return [ConfigIssue(path, f"unknown cluster {name!r} (no clusters are defined)")]
    close = difflib.get_close_matches(name, known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return [ConfigIssue(path, f"unknown cluster {name!r}{hint}")]
