"""Authorization counters per listener (Envoy's RBAC filter stats): requests (or, for the network
filter, connections) allowed and denied by the enforced rules, and what the shadow rules would have
done.

    meshpy_rbac_allowed_total{listener="web",stat_prefix=""}          http.<hcm>.rbac.allowed
    meshpy_rbac_denied_total{...}                                      http.<hcm>.rbac.denied
    meshpy_rbac_shadow_allowed_total{...}                              http.<hcm>.rbac.shadow_allowed
    meshpy_rbac_shadow_denied_total{...}                               http.<hcm>.rbac.shadow_denied

`stat_prefix` is the filter's rules_stat_prefix for the enforced counts and its
shadow_rules_stat_prefix for the shadow ones (Envoy 1.40 names them `rbac.<prefix>.allowed` and
`rbac.<shadow prefix>.shadow_allowed`); for the network filter, its stat_prefix. The counters of one
(listener, prefix) are one object, bound by a filter on its first request (ListenerStats.rbac), and
plain ints after that; like the listener's stats they survive reloads.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, Metric

if TYPE_CHECKING:
    from meshpy.telemetry.metrics import ListenerStats

_FAMILIES = (
    ("meshpy_rbac_allowed", "Requests (connections) the authorization rules allowed.", "allowed"),
    ("meshpy_rbac_denied", "Requests (connections) the authorization rules denied.", "denied"),
    ("meshpy_rbac_shadow_allowed", "Requests (connections) the shadow rules would have allowed.",
     "shadow_allowed"),
    ("meshpy_rbac_shadow_denied", "Requests (connections) the shadow rules would have denied.",
     "shadow_denied"),
)


class RbacCounters:
    __slots__ = ("allowed", "denied", "shadow_allowed", "shadow_denied")

    def __init__(self) -> None:
        self.allowed = self.denied = self.shadow_allowed = self.shadow_denied = 0


def families(listeners: Iterable[ListenerStats]) -> Iterable[Metric]:
    """The four families, nothing when no listener has counted anything (no authz configured)."""
    rows = [(stats.name, prefix, counters) for stats in listeners
            for prefix, counters in sorted(stats.rbac.copy().items())]
    if not rows:
        return
    for name, help_text, attr in _FAMILIES:
        family = CounterMetricFamily(name, help_text, labels=["listener", "stat_prefix"])
        for listener, prefix, counters in rows:
            family.add_metric([listener, prefix], getattr(counters, attr))
        yield family
