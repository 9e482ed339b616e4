"""Policy state that must outlive a compile: rate-limit token buckets and the count of requests an
injected delay is holding (a fault's max_active).

Every config change compiles a new Snapshot, and in a Kubernetes cluster endpoints change all the
time: were buckets built afresh at each compile, every push would refill every rate limit and limits
would stop limiting. So a compile claims its policy state here by identity (the listener, route
config, virtual host and route it belongs to) and by its own config: an unchanged limit at the same
place gets the same bucket back, a changed one a new bucket. State no compile claimed any more is
dropped when the new Snapshot is committed; a compile that fails commits nothing, so the old Snapshot
keeps its state. Like the cluster manager's runtimes, reconciled by identity.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, TypeVar, cast

from meshpy.model.routes import Fault, LocalRateLimit, Route
from meshpy.stack.guards import CompiledFault, TokenBucket

if TYPE_CHECKING:
    from meshpy.runtime import Runtime

Scope = tuple[str, ...]  # (listener, route config, virtual host, route): where a policy sits
C = TypeVar("C", bound=Hashable)  # a policy's config
S = TypeVar("S")  # its state


class PolicyClaims:
    """One compile's view: what it claims, reusing what the live Snapshot holds."""

    __slots__ = ("_live", "claimed", "runtime")

    def __init__(self, live: dict[Hashable, object] | None = None, runtime: Runtime | None = None) -> None:
        self._live = live if live is not None else {}
        self.runtime = runtime  # Envoy's layered runtime, which faults read their keys from
        self.claimed: dict[Hashable, object] = {}

    def bucket(self, scope: Scope, limit: LocalRateLimit) -> TokenBucket:
        state = self.claim(TokenBucket, scope, limit)
        state.runtime = self.runtime
        return state

    def fault(self, scope: Scope, fault: Fault) -> CompiledFault:
        state = self.claim(CompiledFault, scope, fault)
        state.runtime = self.runtime
        return state

    def claim(self, kind: Callable[[C], S], scope: Scope, config: C) -> S:
        """The state of `kind` for `config` at `scope`: the live one if there is one, else new."""
        key = (kind, scope, config)
        found = self.claimed.get(key)
        if found is None:
            found = self._live.get(key)  # (not `or`: a filter instance may well be falsy)
        state = cast(S, found) if found is not None else kind(config)
        self.claimed[key] = state
        return state


class PolicyRuntime:
    """The policy state of the live Snapshot, owned by the app."""

    __slots__ = ("_live", "runtime")

    def __init__(self, runtime: Runtime | None = None) -> None:
        self._live: dict[Hashable, object] = {}
        self.runtime = runtime

    def claims(self) -> PolicyClaims:
        return PolicyClaims(self._live, self.runtime)

    def commit(self, claims: PolicyClaims) -> None:
        """The Snapshot compiled with `claims` is live: its state is the state now."""
        self._live = claims.claimed

    def __len__(self) -> int:
        return len(self._live)


def route_places(routes: tuple[Route, ...]) -> list[str]:
    """Each route's identity for its policy state: its name (the n-th of that name, where names repeat),
    else its position. A route keeps its rate-limit bucket when routes are added around it, if named."""
    seen: dict[str, int] = {}
    places = []
    for j, r in enumerate(routes):
        if r.name:
            n = seen.get(r.name, 0)
            seen[r.name] = n + 1
            places.append(f"{r.name}#{n}" if n else r.name)
        else:
            places.append(f"#{j}")
    return places
