"""The RBAC HTTP filter's unified matcher (meshpy.model.authz_matcher), compiled once into closures and
evaluated per request on the same Facts as the rules (meshpy.stack.authz): `evaluate(facts) ->
(allowed, action name or None)`, so that the filter (meshpy.stack.authz_filter) runs either engine.

Semantics are Envoy 1.40's (source/common/matcher, rbac engine_impl.cc), checked against the binary
in tests/integration/test_rbac_matcher_envoy.py:
- a matcher list takes the first field matcher whose predicate holds and whose on_match gives a
  result; a nested matcher that finds none lets the list go on to its next entry, then on_no_match;
- an exact map looks the value up, a prefix map tries the matching keys longest first; a value with
  no entry, or whose entry gives no result, falls back to on_no_match; no value at all as well;
- an input with nothing to read matches no value (and `not` of that holds);
- the action found allows (ALLOW, LOG) or denies (DENY) and is named; no action denies, unnamed.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable

from meshpy.errors import ConfigError
from meshpy.model.authz_matcher import (
    MatcherTree,
    MatchInput,
    NotPredicate,
    OnMatch,
    Predicate,
    PredicateList,
    RbacMatcher,
    SinglePredicate,
)
from meshpy.ports import TlsInfo
from meshpy.routing.matchers import compile_string_match
from meshpy.stack.authz import Facts, parse_ip

Verdict = tuple[bool, str]  # allowed, the action's name
Walk = Callable[[Facts], Verdict | None]  # None: no result here
Read = Callable[[Facts], str | None]
Test = Callable[[Facts], bool]


def _no_result(f: Facts) -> Verdict | None:
    return None


class CompiledMatcher:
    """An RbacMatcher, compiled: the same interface as meshpy.stack.authz.CompiledRbac."""

    __slots__ = ("_walk", "needs_remote")

    def __init__(self, matcher: RbacMatcher, where: str = "") -> None:
        self.needs_remote = False  # a source_ip or source_port input: the caller computes `remote`
        self._walk = self._matcher(matcher, where)

    def evaluate(self, facts: Facts) -> tuple[bool, str | None]:
        found = self._walk(facts)
        if found is None:
            return False, None
        return found

    # -- the tree ------------------------------------------------------------------------------------
    def _matcher(self, m: RbacMatcher, where: str) -> Walk:
        fallback = self._on_match(m.on_no_match, f"{where}.on_no_match")
        if m.tree is not None:
            return self._tree(m.tree, fallback, f"{where}.matcher_tree")
        entries = tuple((self._predicate(fm.predicate, f"{where}.matchers[{i}].predicate"),
                         self._on_match(fm.on_match, f"{where}.matchers[{i}].on_match"))
                        for i, fm in enumerate(m.matchers))

        def walk(f: Facts) -> Verdict | None:
            for holds, then in entries:
                if holds(f):
                    found = then(f)
                    if found is not None:
                        return found
            return fallback(f)

        return walk

    def _on_match(self, om: OnMatch | None, where: str) -> Walk:
        if om is None:
            return _no_result
        if om.matcher is not None:
            return self._matcher(om.matcher, f"{where}.matcher")
        assert om.action is not None
        verdict: Verdict = (om.action.action != "deny", om.action.name)
        return lambda f: verdict

    def _tree(self, tree: MatcherTree, fallback: Walk, where: str) -> Walk:
        read = self._input(tree.input, f"{where}.input")
        entries = {key: self._on_match(om, f"{where}.map[{key}]") for key, om in tree.entries}
        if not tree.prefix:
            def exact(f: Facts) -> Verdict | None:
                value = read(f)
                then = entries.get(value) if value is not None else None
                found = then(f) if then is not None else None
                return found if found is not None else fallback(f)

            return exact
        longest_first = sorted(entries.items(), key=lambda e: -len(e[0]))

        def prefix(f: Facts) -> Verdict | None:
            value = read(f)
            if value is not None:
                for key, then in longest_first:
                    if value.startswith(key):
                        found = then(f)
                        if found is not None:
                            return found
            return fallback(f)

        return prefix

    # -- predicates ----------------------------------------------------------------------------------
    def _predicate(self, p: Predicate, where: str) -> Test:
        if isinstance(p, SinglePredicate):
            return self._single(p, where)
        if isinstance(p, PredicateList):
            tests = tuple(self._predicate(q, f"{where}[{i}]") for i, q in enumerate(p.predicates))
            if p.all:
                return lambda f: all(t(f) for t in tests)
            return lambda f: any(t(f) for t in tests)
        if isinstance(p, NotPredicate):
            inner = self._predicate(p.predicate, f"{where}.not_matcher")
            return lambda f: not inner(f)
        raise ConfigError.at(where, f"unknown predicate {type(p).__name__}")

    def _single(self, p: SinglePredicate, where: str) -> Test:
        read = self._input(p.input, f"{where}.input")
        if p.match is not None:
            test = compile_string_match(p.match, f"{where}.value_match")
            if test is None:  # (`present`: any value)
                return lambda f: read(f) is not None

            def matches(f: Facts) -> bool:
                value = read(f)
                return value is not None and test(value)

            return matches
        nets = []
        for cidr in p.cidrs:
            try:
                net = ipaddress.ip_network(cidr, strict=False)
            except ValueError as err:
                raise ConfigError.at(f"{where}.custom_match", f"not a CIDR: {err}") from None
            nets.append((net.version, int(net.netmask), int(net.network_address)))
        ranges = tuple(nets)

        def inside(f: Facts) -> bool:
            value = read(f)
            ip = parse_ip(value) if value is not None else None
            return ip is not None and any(ip[0] == v and ip[1] & mask == base for v, mask, base in ranges)

        return inside

    def _input(self, i: MatchInput, where: str) -> Read:
        kind = i.kind
        if kind == "request_header":
            return _header(i.header)
        if kind in ("source_ip", "source_port"):
            self.needs_remote = True
        reader = _READERS.get(kind)
        if reader is None:
            raise ConfigError.at(where, f"unknown input {kind!r}")
        return reader


def _header(name: str) -> Read:
    """The header's lines joined by "," (Envoy's getAllOfHeaderAsString); the pseudo-headers from the
    request line; `host` is Envoy's `:authority`, which a lookup of `host` does not find."""
    if name == ":path":
        return lambda f: f.target or None
    if name == ":method":
        return lambda f: f.method or None
    if name == ":authority":
        return lambda f: f.authority or None
    if name.startswith(":") or name == "host":
        return lambda f: None
    key = name.encode("latin-1")

    def read(f: Facts) -> str | None:
        values = [v for n, v in f.headers if n == key]
        if not values:
            return None
        return b",".join(values).decode("latin-1")

    return read


def _remote(f: Facts) -> str:
    return f.remote if f.remote is not None else f.conn.peer


def _source_port(f: Facts) -> str:
    # An address x-forwarded-for gave has no port: Envoy makes it port 0.
    remote = f.remote
    return str(f.conn.peer_port) if remote is None or remote == f.conn.peer else "0"


def _tls(pick: Callable[[TlsInfo], str]) -> Read:
    def read(f: Facts) -> str | None:
        tls = f.conn.tls
        return (pick(tls) or None) if tls is not None else None

    return read


_READERS: dict[str, Read] = {
    "destination_ip": lambda f: f.destination()[0] or None,
    "destination_port": lambda f: str(f.destination()[1]),
    "source_ip": _remote,
    "source_port": _source_port,
    "direct_source_ip": lambda f: f.conn.peer or None,
    "server_name": _tls(lambda t: t.sni),
    "uri_san": _tls(lambda t: ",".join(t.peer_uris)),
    "dns_san": _tls(lambda t: ",".join(t.peer_dns)),
    "subject": _tls(lambda t: t.peer_subject),
}
