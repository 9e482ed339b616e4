"""The HTTP filter chain in the config model: a listener's filters in order (Envoy's http_filters), and
what a virtual host or a route says of one of them (Envoy's typed_per_filter_config)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:  # (meshpy.model.types imports this module: the model of authz comes after it)
    from meshpy.model.authz import RbacFilter

# Built in: the local rate limit and fault injection, whose configs sit on routes, virtual hosts and
# the listener (`rate_limit:`, `fault:`); authz (Envoy's RBAC), whose config is the spec's own and a
# route's override's; python: a user's class, named by import path.
FilterKind = Literal["authz", "rate_limit", "fault", "python"]
BUILTIN_FILTERS: tuple[FilterKind, ...] = ("authz", "rate_limit", "fault")
# The names Envoy configs give them, which a route's per-filter config may use for an unlisted one.
ENVOY_NAMES: dict[str, FilterKind] = {"envoy.filters.http.local_ratelimit": "rate_limit",
                                      "envoy.filters.http.fault": "fault",
                                      "envoy.filters.http.rbac": "authz"}



@dataclass(frozen=True, slots=True, kw_only=True)
class HttpFilterSpec:
    """One filter of a listener's chain. `config` is canonical JSON text (sorted keys), so that specs
    compare and hash by value: a filter whose class and config are unchanged keeps its instance."""

    name: str  # unique in the chain; per-route overrides name it
    kind: FilterKind
    python_class: str = ""  # "package.module:Class" (kind python)
    config: str = "{}"
    disabled: bool = False  # off unless a virtual host or route turns it on (Envoy's `disabled`)
    rbac: RbacFilter | None = None  # (kind authz) None: only where a virtual host or route gives one


@dataclass(frozen=True, slots=True, kw_only=True)
class FilterOverride:
    """A virtual host's or route's word on the filter `name`: on or off here, and (python filters) a
    config of its own here. The route's word wins over its virtual host's."""

    name: str
    disabled: bool | None = None  # None: as the listener (or the virtual host) says
    config: str | None = None  # canonical JSON; None: the listener's
    rbac: RbacFilter | None = None  # (authz) replaces the listener's here, and turns it on (RBACPerRoute)
    # True: `name` is a filter class ("package.module:Class"), and `config` is for every filter of
    # that class on the listener that no override here names by its own name. It never turns a filter
    # on or off. (Envoy's deprecated `cors` of virtual hosts and routes, which any CORS filter reads.)
    by_class: bool = False


def effective_chain(specs: tuple[HttpFilterSpec, ...]) -> tuple[HttpFilterSpec, ...]:
    """The chain a listener runs: the built-ins it does not list first, in the order of
    BUILTIN_FILTERS (so `rate_limit:` and `fault:` on routes work with no `filters:` at all), then its
    own list in order. Authz filters at the head of its list stay ahead of the others: a request that
    is refused should take no rate-limit token and wait out no injected delay (as Istio orders them)."""
    listed = {s.kind for s in specs}
    implicit = tuple(HttpFilterSpec(name=k, kind=k) for k in BUILTIN_FILTERS if k not in listed)
    lead = leading_authz(specs)
    return (*specs[:lead], *implicit, *specs[lead:])


def leading_authz(specs: tuple[HttpFilterSpec, ...]) -> int:
    """How many authz filters with a config of their own open the list."""
    n = 0
    while n < len(specs) and specs[n].kind == "authz" and specs[n].rbac is not None:
        n += 1
    return n
