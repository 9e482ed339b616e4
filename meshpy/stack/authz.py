"""The authorization engine: an Rbac (meshpy.model.authz) compiled once into plain functions, and
evaluated per request (the HTTP filter, meshpy.stack.authz_filter) or per connection (the network
filter: `NetworkAuthz.check`).

Semantics are Envoy 1.40's (source/extensions/filters/common/rbac, and the binary):
- policies are tried in name order; the first whose permissions and principals both match is the
  matched policy; `allow` allows iff one matched, `deny` denies iff one matched, `log` always allows;
- `authenticated` needs a TLS connection; with a principal name it must match a URI SAN of the peer's
  certificate, else a DNS SAN, else its subject (AuthenticatedMatcher::matches), all tried;
- `url_path` sees the path without query and fragment; a request without a path (CONNECT) and a
  connection match no path rule; header rules are the route table's (any line of a repeated header);
- destination ip and port are the local address the client connected to: in a sidecar, the original
  destination (Envoy's original_dst listener filter restores it as the local address);
- `remote_ip` is the client address x-forwarded-for gives under the listener's use_remote_address and
  xff_num_trusted_hops (`remote_address` below); `source_ip` and `direct_remote_ip` the peer's.

Per request, `Facts` computes each fact on first use only, so a policy on paths never parses an
address, and a policy on addresses never builds a header view.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache

from meshpy.errors import ConfigError
from meshpy.model.authz import (
    AllOf,
    Always,
    AnyOf,
    Authenticated,
    HeaderRule,
    IpRule,
    NetworkRbac,
    Not,
    PathRule,
    PortRule,
    Rbac,
    Rule,
    ServerNameRule,
)
from meshpy.ports import ConnectionInfo
from meshpy.routing.matchers import HeaderMatcher, RequestView, compile_string_match, split_path
from meshpy.telemetry.metrics import ListenerStats
from meshpy.telemetry.rbac_stats import RbacCounters

Ip = tuple[int, int]  # (version, the address as an int): what a network test compares
Test = Callable[["Facts"], bool]


@lru_cache(maxsize=4096)  # a pure function of its text; peers repeat (keep-alive, a few clients)
def parse_ip(text: str) -> Ip | None:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    return address.version, int(address)


class Facts:
    """One request's (or connection's) facts, each computed when a rule first asks."""

    __slots__ = ("_path", "_view", "authority", "conn", "headers", "method", "remote", "target")

    def __init__(self, conn: ConnectionInfo, method: str = "", target: str | None = None, authority: str = "",
                 headers: Sequence[tuple[bytes, bytes]] = (), remote: str | None = None) -> None:
        self.conn = conn
        self.method = method
        self.target = target  # path and query as sent; None (a connection) or "" (CONNECT): no path
        self.authority = authority
        self.headers = headers
        self.remote = remote  # the client address x-forwarded-for gave; None: the peer
        self._view: RequestView | None = None
        self._path: str | None = None

    def view(self) -> RequestView:
        view = self._view
        if view is None:
            view = self._view = RequestView(self.authority, self.target or "", self.method, self.headers)
        return view

    def url_path(self) -> str | None:
        path = self._path
        if path is None and self.target:
            path = self._path = split_path(self.target)[0]
        return path

    def peer_ip(self) -> Ip | None:
        return parse_ip(self.conn.peer)

    def remote_ip(self) -> Ip | None:
        return parse_ip(self.remote if self.remote is not None else self.conn.peer)

    def destination(self) -> tuple[str, int]:
        conn = self.conn
        return conn.original_destination or (conn.local, conn.local_port)


def remote_address(peer: str, headers: Sequence[tuple[bytes, bytes]], use_remote_address: bool,
                   trusted_hops: int) -> str:
    """The downstream remote address as Envoy's connection manager sets it: with use_remote_address,
    the peer, or with N trusted hops the Nth address from the right of x-forwarded-for; without, the
    (N+1)th from the right. The peer when x-forwarded-for has too few entries or no address there."""
    if use_remote_address and trusted_hops == 0:
        return peer
    skip = trusted_hops - 1 if use_remote_address else trusted_hops
    lines = [v for n, v in headers if n == b"x-forwarded-for"]
    if not lines:
        return peer
    entries = b",".join(lines).split(b",")
    if skip >= len(entries):
        return peer
    candidate = entries[-1 - skip].strip().decode("latin-1")
    return candidate if parse_ip(candidate) is not None else peer


class CompiledRbac:
    """An Rbac, compiled: `evaluate(facts) -> (allowed, matched policy or None)`."""

    __slots__ = ("_allow_on_match", "_log", "_policies", "needs_remote")

    def __init__(self, rbac: Rbac, where: str = "") -> None:
        compiler = _Compiler()
        self._policies = tuple(
            (p.name, compiler.any_of(p.permissions, f"{where}.policies[{p.name}].permissions"),
             compiler.any_of(p.principals, f"{where}.policies[{p.name}].principals"))
            for p in rbac.policies)
        self._allow_on_match = rbac.action == "allow"
        self._log = rbac.action == "log"
        self.needs_remote = compiler.needs_remote  # a remote_ip rule: the caller computes `remote`

    def matched(self, facts: Facts) -> str | None:
        """The first policy, in name order, whose permissions and principals match."""
        for name, permissions, principals in self._policies:
            if permissions(facts) and principals(facts):
                return name
        return None

    def evaluate(self, facts: Facts) -> tuple[bool, str | None]:
        policy = self.matched(facts)
        if self._log:
            return True, policy
        return (policy is not None) == self._allow_on_match, policy


def _always(facts: Facts) -> bool:
    return True


class _Compiler:
    """Rule trees into closures; remembers whether any rule reads the remote address."""

    __slots__ = ("needs_remote",)

    def __init__(self) -> None:
        self.needs_remote = False

    def any_of(self, rules: tuple[Rule, ...], where: str) -> Test:
        tests = tuple(self.rule(r, f"{where}[{i}]") for i, r in enumerate(rules))
        if len(tests) == 1:
            return tests[0]

        def any_of(f: Facts) -> bool:
            for test in tests:  # noqa: SIM110 - any() over a generator costs about twice as much
                if test(f):
                    return True
            return False

        return any_of

    def rule(self, rule: Rule, where: str) -> Test:
        if isinstance(rule, Always):
            return _always
        if isinstance(rule, HeaderRule):
            return _header(rule, where)
        if isinstance(rule, PathRule):
            return _path(rule, where)
        if isinstance(rule, IpRule):
            return self._ip(rule, where)
        if isinstance(rule, PortRule):
            start, end = rule.start, rule.end
            return lambda f: start <= f.destination()[1] < end
        if isinstance(rule, ServerNameRule):
            sni = compile_string_match(rule.match, where) or _always_str
            return lambda f: sni(f.conn.tls.sni if f.conn.tls is not None else "")
        if isinstance(rule, Authenticated):
            return _authenticated(rule, where)
        if isinstance(rule, AllOf):
            tests = tuple(self.rule(r, f"{where}.and[{i}]") for i, r in enumerate(rule.rules))

            def all_of(f: Facts) -> bool:
                for test in tests:  # noqa: SIM110 - as any_of
                    if not test(f):
                        return False
                return True

            return all_of
        if isinstance(rule, AnyOf):
            return self.any_of(rule.rules, f"{where}.or")
        if isinstance(rule, Not):
            inner = self.rule(rule.rule, f"{where}.not")
            return lambda f: not inner(f)
        raise ConfigError.at(where, f"unknown rule {type(rule).__name__}")

    def _ip(self, rule: IpRule, where: str) -> Test:
        try:
            net = ipaddress.ip_network(rule.cidr, strict=False)
        except ValueError as err:
            raise ConfigError.at(where, f"not a CIDR: {err}") from None
        version, base, mask = net.version, int(net.network_address), int(net.netmask)

        def inside(ip: Ip | None) -> bool:
            return ip is not None and ip[0] == version and ip[1] & mask == base

        if rule.source == "destination":
            return lambda f: inside(parse_ip(f.destination()[0]))
        if rule.source == "remote":
            self.needs_remote = True
            return lambda f: inside(f.remote_ip())
        return lambda f: inside(f.peer_ip())


def _always_str(value: str) -> bool:
    return True


def _header(rule: HeaderRule, where: str) -> Test:
    hm = rule.match
    if hm.name == ":method":
        # The method is always there: tested directly, without a header view (Istio's `methods` are
        # such rules, on most policies).
        test = compile_string_match(hm.match, where + ".match")
        invert = hm.invert
        if test is None:
            return lambda f: not invert
        return lambda f: test(f.method) != invert
    header = HeaderMatcher(hm, where)
    return lambda f: header.matches(f.view())


def _path(rule: PathRule, where: str) -> Test:
    test = compile_string_match(rule.match, where) or _always_str

    def path(f: Facts) -> bool:
        p = f.url_path()
        return p is not None and test(p)

    return path


def _authenticated(rule: Authenticated, where: str) -> Test:
    if rule.principal is None:
        return lambda f: f.conn.tls is not None
    test = compile_string_match(rule.principal, where) or _always_str

    def authenticated(f: Facts) -> bool:
        tls = f.conn.tls
        if tls is None:
            return False
        return any(map(test, tls.peer_uris)) or any(map(test, tls.peer_dns)) or test(tls.peer_subject)

    return authenticated


# -- the network filter ------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ConnectionDecision:
    """What the network filter decided for one connection. `allowed` is what to do; `policy` the
    matched policy (Envoy's termination details: rbac_access_denied_matched_policy[<policy or none>]);
    `enforced` False when there are no rules (allowed, and not counted); `shadow` is the shadow
    rules' (allowed, policy), None without shadow rules."""

    allowed: bool
    policy: str | None
    enforced: bool
    shadow: tuple[bool, str | None] | None


class NetworkAuthz:
    """A network RBAC filter's config, compiled. Envoy 1.40 decides on the connection's first bytes
    from the client, not at accept (ONE_TIME_ON_FIRST_BYTE; CONTINUOUS gives the same answer on
    connection facts), closes a denied connection (after delay_deny when set), and counts
    `<stat_prefix>rbac.allowed|denied` and `<stat_prefix>rbac.<shadow_rules_stat_prefix>.shadow_*`:
    here, once `bind` gave it the listener's stats, `meshpy_rbac_*_total{stat_prefix=...}` with those
    two prefixes (`stat_prefix`, `stat_prefix + shadow_rules_stat_prefix`)."""

    __slots__ = ("counters", "engine", "model", "shadow", "shadow_counters")

    def __init__(self, model: NetworkRbac, where: str = "") -> None:
        self.model = model
        self.engine = CompiledRbac(model.rules, f"{where}.rules") if model.rules is not None else None
        self.shadow = (CompiledRbac(model.shadow_rules, f"{where}.shadow_rules")
                       if model.shadow_rules is not None else None)
        self.counters: RbacCounters | None = None
        self.shadow_counters: RbacCounters | None = None

    def bind(self, stats: ListenerStats) -> None:
        """Count into the listener's stats from now on (once per compiled listener)."""
        self.counters = stats.rbac_counters(self.model.stat_prefix)
        model = self.model
        self.shadow_counters = stats.rbac_counters(model.stat_prefix + model.shadow_rules_stat_prefix)

    def check(self, conn: ConnectionInfo) -> ConnectionDecision:
        facts = Facts(conn)
        shadow = self.shadow.evaluate(facts) if self.shadow is not None else None
        if shadow is not None and (sc := self.shadow_counters) is not None:
            if shadow[0]:
                sc.shadow_allowed += 1
            else:
                sc.shadow_denied += 1
        if self.engine is None:
            return ConnectionDecision(True, None, False, shadow)
        allowed, policy = self.engine.evaluate(facts)
        if (c := self.counters) is not None:
            if allowed:
                c.allowed += 1
            else:
                c.denied += 1
        return ConnectionDecision(allowed, policy, True, shadow)


_BLANKS = str.maketrans(dict.fromkeys(" \t\f\v\n\r", "_"))


def denial_details(policy: str | None) -> str:
    """Envoy's response code details (and a network filter's termination details) for a denial,
    blanks in the policy name made `_` (Envoy's responseDetail)."""
    return f"rbac_access_denied_matched_policy[{(policy or 'none').translate(_BLANKS)}]"
