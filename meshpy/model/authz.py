"""Authorization in the config model: Envoy's RBAC (envoy.config.rbac.v3), as the HTTP filter
`envoy.filters.http.rbac` and the network filter `envoy.filters.network.rbac` use it.

An `Rbac` is an action and named policies. A policy matches when one of its permissions (what is asked:
path, method, port, ...) and one of its principals (who asks: peer identity, address, ...) match. With
`allow`, a request is allowed when a policy matches; with `deny`, denied when one does; with `log`,
always allowed. Policies are kept sorted by name: Envoy keeps them in a std::map and reports the first
that matches in that order, so the policy a denial names is the same here.

A rule is one of the small classes below, the same for permissions and principals (Envoy's two oneofs
share most of their members); which kinds may appear where is the readers' business. Compiled by
meshpy.stack.authz.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from meshpy.model.routes import HeaderMatch, StringMatch

if TYPE_CHECKING:  # (meshpy.model.authz_matcher reads Action from here)
    from meshpy.model.authz_matcher import RbacMatcher

Action = Literal["allow", "deny", "log"]
# Where an address rule looks: the local address the client connected to (its original destination in
# a sidecar), the connection's peer (source_ip and direct_remote_ip: the same thing without the PROXY
# protocol, kept apart so that a config reads back as it was written), or the client's address as
# x-forwarded-for and the listener's trust in it say (remote_ip).
IpSource = Literal["destination", "source", "direct_remote", "remote"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Always:
    """Envoy's `any: true`."""


@dataclass(frozen=True, slots=True, kw_only=True)
class HeaderRule:
    """A request header (pseudo-headers too), as a route's header match: no header means no match,
    in a network filter (which has no headers) always."""

    match: HeaderMatch


@dataclass(frozen=True, slots=True, kw_only=True)
class PathRule:
    """Envoy's `url_path`: the request path without its query string and fragment."""

    match: StringMatch


@dataclass(frozen=True, slots=True, kw_only=True)
class IpRule:
    source: IpSource
    cidr: str  # canonical network text, "10.0.0.0/8", "2001:db8::/32"


@dataclass(frozen=True, slots=True, kw_only=True)
class PortRule:
    """The destination port, in [start, end) (Envoy's destination_port is [port, port + 1))."""

    start: int
    end: int


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerNameRule:
    """The SNI the client sent (empty on a plaintext connection)."""

    match: StringMatch


@dataclass(frozen=True, slots=True, kw_only=True)
class Authenticated:
    """A TLS peer. `principal` None: any TLS connection; else it must match a URI SAN of the peer's
    certificate, a DNS SAN, or its subject, tried in that order (Envoy's AuthenticatedMatcher)."""

    principal: StringMatch | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class AllOf:
    rules: tuple[Rule, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class AnyOf:
    rules: tuple[Rule, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Not:
    rule: Rule


Rule = (Always | HeaderRule | PathRule | IpRule | PortRule | ServerNameRule | Authenticated | AllOf | AnyOf
        | Not)


@dataclass(frozen=True, slots=True, kw_only=True)
class Policy:
    name: str
    permissions: tuple[Rule, ...]  # OR'd; at least one
    principals: tuple[Rule, ...]  # OR'd; at least one


@dataclass(frozen=True, slots=True, kw_only=True)
class Rbac:
    action: Action
    policies: tuple[Policy, ...] = ()  # sorted by name, names unique


@dataclass(frozen=True, slots=True, kw_only=True)
class RbacFilter:
    """The HTTP filter's config, or a route's that replaces it (Envoy's RBACPerRoute). `rules` None:
    no enforcement and nothing counted (Envoy's filter without `rules`); `shadow_rules` are evaluated
    and counted, never enforced. The stat prefixes go into the counters' `stat_prefix` label.
    `matcher` / `shadow_matcher` (meshpy.model.authz_matcher) take the place of `rules` /
    `shadow_rules`: a config has one or the other of each pair (Envoy ignores the rules beside a
    matcher)."""

    rules: Rbac | None = None
    shadow_rules: Rbac | None = None
    rules_stat_prefix: str = ""
    shadow_rules_stat_prefix: str = ""
    matcher: RbacMatcher | None = None
    shadow_matcher: RbacMatcher | None = None


EnforcementType = Literal["one_time_on_first_byte", "continuous"]


@dataclass(frozen=True, slots=True, kw_only=True)
class NetworkRbac:
    """The network filter's config: connection facts only (header rules are refused, as Envoy does).
    Envoy decides on the connection's first bytes from the client and closes a denied one, after
    `delay_deny` when set; `continuous` re-evaluates on every read, which for connection facts gives
    the same answer."""

    stat_prefix: str
    rules: Rbac | None = None
    shadow_rules: Rbac | None = None
    shadow_rules_stat_prefix: str = ""
    enforcement_type: EnforcementType = "one_time_on_first_byte"
    delay_deny: float | None = None  # seconds


def sorted_policies(policies: list[Policy]) -> tuple[Policy, ...]:
    """Envoy's evaluation order: by name, byte-wise (std::map<std::string, ...>)."""
    return tuple(sorted(policies, key=lambda p: p.name.encode()))
