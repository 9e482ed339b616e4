"""The route table: a RouteConfig compiled ahead of time, matched on every request.

Matching follows Envoy's route matching (configuration/http/http_conn_man/route_matching):
the Host/:authority picks one virtual host (exact domain, then the longest `*suffix` wildcard, then the
longest `prefix*` wildcard, then `*`), then its routes are tried in order and the first match wins.

The hot path is `RouteTable.match`. What makes it cheap:
- The authority-to-virtual-host answer is memoised per table (a pure function of the authority).
- Each route carries a small integer path kind, so the loop does one comparison and one string test
  before it knows a simple route matched; the per-request `RequestView` (header/query parsing) exists
  only once a route with header, query or method conditions gets past its path test.
- A run of consecutive simple, case-sensitive prefix/exact routes is matched in one step
  (`PrefixIndex`): a dict lookup per distinct prefix length, or one regex alternation in C.
"""

from __future__ import annotations

import random
import re
from bisect import bisect_right
from collections.abc import Callable, Sequence
from typing import Any, Final, final

from meshpy.errors import ConfigError
from meshpy.model.filter_types import FilterOverride
from meshpy.model.routes import (
    DirectResponseAction,
    ForwardAction,
    LocalRateLimit,
    RedirectAction,
    Route,
    RouteAction,
    RouteConfig,
    VirtualHost,
)
from meshpy.routing.matchers import (
    DomainIndex,
    HeaderMatcher,
    PrefixIndex,
    QueryMatcher,
    RequestView,
    compile_regex,
    re2_substitution,
    redirect_host,
    split_path,
)
from meshpy.stack.filter_chain import ChainBuilder
from meshpy.stack.headers import compile_edits
from meshpy.stack.mirror import MirrorFilter
from meshpy.stack.policy_runtime import PolicyClaims, Scope, route_places

# Path match kinds. Envoy 1.40 tests every kind against the path with query and fragment removed
# (`PathMatcher::match`; checked against the binary: prefix "/p?x" does not match "/p?x=1"). For a
# prefix without "?" and "#", testing the whole :path is equivalent (the prefix cannot reach past the
# first "?"), so prefix kinds skip the split; a prefix containing "?" or "#" can never match and its
# route is left out of the match loop.
_PREFIX: Final = 0
_PREFIX_NOCASE: Final = 1
_EXACT: Final = 2
_EXACT_NOCASE: Final = 3
_REGEX: Final = 4

# Host header values are client-controlled: bound the memo so a scan of random hosts cannot grow it
# without limit. Clearing (not LRU) keeps the hit path a single dict lookup.
_HOST_MEMO_LIMIT: Final = 4096
# Below this many routes a linear scan is as fast as the index.
_BLOCK_MIN_ROUTES: Final = 4


@final
class CompiledVirtualHost:
    __slots__ = ("_connect", "_steps", "filters", "limiter", "name", "routes", "virtual_host")

    def __init__(self, virtual_host: VirtualHost | None, policies: PolicyClaims | None = None,
                 scope: Scope = ()) -> None:
        self.virtual_host = virtual_host
        self.filters: tuple[FilterOverride, ...] = ()  # checked by the table (ChainBuilder.check)
        self.name = virtual_host.name if virtual_host is not None else ""
        limit = virtual_host.rate_limit if virtual_host is not None else None
        self.limiter = policies.bucket(scope, limit) if limit is not None and policies is not None else None
        self.routes: tuple[CompiledRoute, ...] = ()
        self._steps: tuple[CompiledRoute | PrefixIndex[CompiledRoute], ...] = ()
        self._connect: tuple[CompiledRoute, ...] = ()  # the routes for CONNECT requests, apart


@final
class CompiledRoute:
    __slots__ = (
        "_cluster_plugin",
        "_clusters",
        "_cumulative",
        "_headers",
        "_kind",
        "_match_len",
        "_methods",
        "_prefix_rewrite",
        "_query",
        "_random",
        "_regex",
        "_regex_rewrite",
        "_simple",
        "_single_cluster",
        "_total_weight",
        "_value",
        "action",
        "complete_filters",
        "connect",
        "fault",
        "filtered",
        "filters",
        "forward",
        "grpc_timeout",
        "hash_policy",
        "host_rewrite",
        "idle_timeout",
        "limiter",
        "max_stream_duration",
        "never_matches",
        "request_body_filters",
        "request_body_sized",
        "response_body_filters",
        "response_changes",
        "response_filters",
        "retry",
        "rewrites",
        "route",
        "stream_limited",
        "timeout",
        "upgrades",
        "upstream_filters",
        "virtual_host",
    )

    def __init__(
        self,
        route: Route,
        vhost: CompiledVirtualHost,
        rc: RouteConfig,
        where: str,
        rand: Callable[[], float],
        policies: PolicyClaims | None = None,
        scope: Scope = (),
        chain: ChainBuilder | None = None,
    ) -> None:
        self.route = route
        if policies is None:
            policies = PolicyClaims()  # (a route compiled alone: state of its own)
        if chain is None:
            chain = ChainBuilder((), policies, "")
        self.virtual_host = vhost
        self.action: RouteAction = route.action
        # Flattened for the request path, which reads them on every forwarded request.
        fwd = route.action if isinstance(route.action, ForwardAction) else None
        self.forward = fwd is not None
        self.timeout = fwd.timeout if fwd is not None else None
        self.idle_timeout = fwd.idle_timeout if fwd is not None else None
        self.max_stream_duration = fwd.max_stream_duration if fwd is not None else None
        self.grpc_timeout = fwd.grpc_timeout if fwd is not None else None
        # A duration of its own, or a gRPC call's grpc-timeout (also a call a filter made gRPC: gRPC-Web's).
        self.stream_limited = self.max_stream_duration is not None or self.grpc_timeout is not None
        self.retry = fwd.retry if fwd is not None else None
        self.hash_policy = fwd.hash_policy if fwd is not None else ()
        # The route's word on upgrades (type -> allowed); None: the listener's alone.
        self.upgrades = {k.encode(): v for k, v in fwd.upgrades} if fwd is not None and fwd.upgrades else None
        # The route's own token bucket, else its virtual host's (shared by its routes); faults.
        limit = route.rate_limit
        self.limiter = policies.bucket(scope, limit) if limit is not None else vhost.limiter
        self.fault = policies.fault(scope, route.fault) if route.fault is not None else None
        self.host_rewrite = fwd.host_rewrite.encode("latin-1") if fwd and fwd.host_rewrite else None
        self.rewrites = fwd is not None and (fwd.prefix_rewrite is not None or fwd.regex_rewrite is not None)
        vh_model = vhost.virtual_host
        assert vh_model is not None
        # The filters between routing and the router, in the listener's order, one tuple per hook
        # (empty: no cost); the route's header edits are filters of the chain too.
        chain_ = chain.build(
            self.limiter, self.fault,
            compile_edits(route.request_headers, vh_model.request_headers, rc.request_headers),
            compile_edits(route.response_headers, vh_model.response_headers, rc.response_headers),
            vhost.filters, route.filters, where)
        self.filters = chain_.request
        self.upstream_filters: tuple[Any, ...] = chain_.upstream  # (header edits, mirrors: on_upstream)
        self.response_filters = chain_.response
        self.request_body_filters = chain_.request_body
        if fwd is not None and fwd.mirrors:  # (after the chain: Envoy's router mirrors, last of all)
            mirror = MirrorFilter(fwd.mirrors, self.timeout)
            self.upstream_filters = (*chain_.upstream, mirror)
            self.request_body_filters = (*chain_.request_body, mirror)  # type: ignore[arg-type]  # (same hooks)
        # Whether the request passes the chain at all (Exchange._filtered): filters, or body hooks only.
        self.filtered = bool(self.filters) or bool(self.request_body_filters)
        # Its body filters only read the body: the request keeps its content-length upstream.
        self.request_body_sized = all(f.user.keeps_body_length for f in self.request_body_filters)
        self.response_body_filters = chain_.response_body
        self.complete_filters = chain_.complete
        # One flag for the response path: the head passes through untouched unless this is set.
        self.response_changes = bool(self.response_filters) or bool(self.response_body_filters)
        m = route.match
        self.connect = m.connect
        self._value = m.path
        self._regex: Callable[[str], re.Match[str] | None] | None = None
        # Characters of the path that a prefix_rewrite replaces; None: the whole path (regex routes).
        self._match_len: int | None = len(m.path)
        self.never_matches = False
        if m.path_kind == "prefix":
            self._kind = _PREFIX if m.case_sensitive else _PREFIX_NOCASE
            self.never_matches = "?" in m.path or "#" in m.path
        elif m.path_kind == "path":
            self._kind = _EXACT if m.case_sensitive else _EXACT_NOCASE
        elif m.path_kind == "regex":
            # Envoy ignores case_sensitive for regex routes.
            self._kind = _REGEX
            self._regex = compile_regex(m.path, f"{where}.match.path").fullmatch
            self._match_len = None
        else:
            raise ConfigError.at(f"{where}.match.path_kind", f"unknown path match kind {m.path_kind!r}")
        if not m.case_sensitive:
            self._value = m.path.lower()
        self._methods = frozenset(m.methods)
        self._headers = tuple(
            HeaderMatcher(h, f"{where}.match.headers[{i}]") for i, h in enumerate(m.headers)
        )
        self._query = tuple(QueryMatcher(q, f"{where}.match.query[{i}]") for i, q in enumerate(m.query))
        self._simple = not (self._methods or self._headers or self._query)
        self._random = rand
        self._single_cluster: str | None = None
        self._cluster_plugin: Any = None  # a cluster chosen per request (meshpy.extensions.lua_cluster)
        self._clusters: tuple[str, ...] = ()
        self._cumulative: tuple[int, ...] = ()
        self._total_weight = 0
        self._regex_rewrite: tuple[re.Pattern[str], str] | None = None
        self._prefix_rewrite: str | None = None
        action = route.action
        if isinstance(action, ForwardAction):
            self._compile_forward(action, f"{where}.action")
        elif isinstance(action, RedirectAction):
            if action.path is not None and action.prefix_rewrite is not None:
                raise ConfigError.at(f"{where}.action", "path and prefix_rewrite are mutually exclusive")
        elif not isinstance(action, DirectResponseAction):
            raise ConfigError.at(f"{where}.action", f"unknown action {type(action).__name__}")

    def _compile_forward(self, action: ForwardAction, where: str) -> None:
        if action.cluster_plugin is not None and action.cluster is None and not action.weighted:
            # Imported where a config has one, as every extension is. The script's Lua state is the
            # route's, made as the table compiles (a script that does not load is the config's error).
            from meshpy.extensions.lua_cluster import LuaClusterPlugin
            from meshpy.extensions.lua_runtime import ScriptError

            try:
                self._cluster_plugin = LuaClusterPlugin(action.cluster_plugin)
            except ScriptError as err:
                raise ConfigError.at(f"{where}.cluster_plugin", str(err)) from err
        elif (action.cluster is None) == (not action.weighted):
            raise ConfigError.at(where, "exactly one of cluster and weighted must be set")
        if action.cluster is not None:
            self._single_cluster = action.cluster
        elif action.weighted:
            clusters: list[str] = []
            ends: list[int] = []
            total = 0
            for wc in action.weighted:
                if wc.weight < 0:
                    raise ConfigError.at(f"{where}.weighted", "weights must be >= 0")
                total += wc.weight
                clusters.append(wc.name)
                ends.append(total)
            if total <= 0:
                raise ConfigError.at(f"{where}.weighted", "the total weight must be > 0")
            # random() * total is < total in exact arithmetic, but float rounding can land on it;
            # a sentinel entry (the last cluster with weight) absorbs that instead of an IndexError.
            last = max(i for i, wc in enumerate(action.weighted) if wc.weight > 0)
            clusters.append(clusters[last])
            self._clusters = tuple(clusters)
            self._cumulative = tuple(ends)
            self._total_weight = total
        if action.prefix_rewrite is not None and action.regex_rewrite is not None:
            raise ConfigError.at(where, "prefix_rewrite and regex_rewrite are mutually exclusive")
        self._prefix_rewrite = action.prefix_rewrite
        rr = action.regex_rewrite
        if rr is not None:
            pattern = compile_regex(rr.pattern, f"{where}.regex_rewrite.pattern")
            self._regex_rewrite = (pattern, re2_substitution(rr.substitution, pattern, where))

    @property
    def name(self) -> str:
        return self.route.name

    def __repr__(self) -> str:
        return f"<CompiledRoute {self.route.name or self._value!r} in {self.virtual_host.name!r}>"

    def matches_rest(self, req: RequestView) -> bool:
        """Methods, headers and query parameters (the path was tested by the caller)."""
        if self._methods and req.method not in self._methods:
            return False
        for hm in self._headers:
            if not hm.matches(req):
                return False
        for qm in self._query:  # noqa: SIM110 - a loop, not all(genexpr): no generator per request
            if not qm.matches(req):
                return False
        return True

    def pick_cluster(self, ex: Any = None) -> str:
        """The cluster to forward to: the single one, a weighted random choice, or the one a plugin
        names for the request `ex` (its default without one)."""
        single = self._single_cluster
        if single is not None:
            return single
        plugin = self._cluster_plugin
        if plugin is not None:
            return plugin.cluster(ex)  # type: ignore[no-any-return]
        if not self._clusters:
            raise ValueError(f"route {self.route.name!r} does not forward to a cluster")
        return self._clusters[bisect_right(self._cumulative, self._random() * self._total_weight)]

    def _replace_matched(self, replacement: str, path: str) -> str:
        n = self._match_len
        if n is None:
            n = len(split_path(path)[0])
        return replacement + path[n:]

    def rewrite_path(self, path: str) -> str:
        """The upstream :path after this route's prefix_rewrite or regex_rewrite (Envoy semantics:
        prefix_rewrite replaces the matched prefix, or for exact/regex routes the whole matched path;
        regex_rewrite substitutes in the path without its query string, which is kept)."""
        # Both are None unless this is a forward route with a rewrite: two loads in the common case.
        prefix_rewrite = self._prefix_rewrite
        if prefix_rewrite is not None:
            return self._replace_matched(prefix_rewrite, path)
        rr = self._regex_rewrite
        if rr is not None:
            n = len(split_path(path)[0])
            return rr[0].sub(rr[1], path[:n]) + path[n:]
        return path

    def redirect_location(self, scheme: str, authority: str, path: str) -> str:
        """The absolute Location of a redirect route, as Envoy's `Http::Utility::newUri` builds it.

        `scheme` is the scheme the request came in with (Envoy uses x-forwarded-proto, which the
        connection manager sets to exactly that)."""
        rd = self.action
        if not isinstance(rd, RedirectAction):
            raise ValueError(f"route {self.route.name!r} is not a redirect")
        new_scheme = rd.scheme or scheme
        new_port = f":{rd.port}" if rd.port else ""
        host = rd.host or redirect_host(authority, scheme, new_scheme, new_port)
        path_has_query = False
        if rd.path:
            if "?" in rd.path:
                # The redirect's own query wins over the request's, and strip_query does not apply.
                new_path = rd.path
                path_has_query = True
            else:
                q = path.find("?")
                new_path = rd.path if q < 0 else rd.path + path[q:]
        elif rd.prefix_rewrite is not None:
            new_path = self._replace_matched(rd.prefix_rewrite, path)
        else:
            new_path = path
        if not new_path.startswith("/"):
            new_path = "/" + new_path
        if rd.strip_query and not path_has_query:
            q = new_path.find("?")
            if q >= 0:
                new_path = new_path[:q]
        return f"{new_scheme}://{host}{new_port}{new_path}"


def _steps(routes: Sequence[CompiledRoute]) -> tuple[CompiledRoute | PrefixIndex[CompiledRoute], ...]:
    """The match loop's steps: routes, with runs of simple case-sensitive prefix/exact routes folded
    into one PrefixIndex (first match in run order, as the linear scan would find it)."""
    steps: list[CompiledRoute | PrefixIndex[CompiledRoute]] = []
    run: list[CompiledRoute] = []

    def flush() -> None:
        if len(run) >= _BLOCK_MIN_ROUTES:
            steps.append(PrefixIndex([(r._value, r._kind == _EXACT, r) for r in run]))
        else:
            steps.extend(run)
        run.clear()

    for r in routes:
        if r.never_matches:
            continue
        if r._simple and r._kind in (_PREFIX, _EXACT):
            run.append(r)
        else:
            flush()
            steps.append(r)
    flush()
    return tuple(steps)


@final
class RouteTable:
    """One RouteConfig, compiled. Immutable except for the authority memo, which only caches a pure
    function of the authority, so sharing a table between requests is safe."""

    __slots__ = ("_domains", "_host_memo", "_no_vhost", "route_config", "virtual_hosts")

    def __init__(self, rc: RouteConfig, *, rand: Callable[[], float] = random.random,
                 rate_limit: LocalRateLimit | None = None, policies: PolicyClaims | None = None,
                 scope: str = "", chain: ChainBuilder | None = None) -> None:
        """`policies`: where rate-limit buckets and fault state come from (meshpy.stack.policy_runtime),
        so that they outlive this table when their place and config are unchanged; `scope` names this
        table's place there (its listener); `chain`: the listener's HTTP filters (the built-in ones
        alone when None)."""
        self.route_config = rc
        self._domains: DomainIndex[CompiledVirtualHost] = DomainIndex(rc.ignore_port_in_host)
        if policies is None:
            policies = PolicyClaims()
        if chain is None:
            chain = ChainBuilder((), policies, scope)
        compiled = []
        # The listener's bucket, shared by every virtual host without one of its own.
        shared = policies.bucket((scope,), rate_limit) if rate_limit is not None else None
        for i, vh in enumerate(rc.virtual_hosts):
            vscope = (scope, rc.name, vh.name or f"#{i}")
            cvh = CompiledVirtualHost(vh, policies, vscope)
            if cvh.limiter is None:
                cvh.limiter = shared
            where = f"virtual_hosts[{i}]"
            cvh.filters = chain.check(vh.filters, where)
            cvh.routes = tuple(
                CompiledRoute(r, cvh, rc, f"{where}.routes[{j}]", rand, policies, (*vscope, place), chain)
                for j, (r, place) in enumerate(zip(vh.routes, route_places(vh.routes), strict=True))
            )
            cvh._steps = _steps([r for r in cvh.routes if not r.connect])
            cvh._connect = tuple(r for r in cvh.routes if r.connect)
            compiled.append(cvh)
            for j, domain in enumerate(vh.domains):
                self._domains.add(domain, cvh, f"{where}.domains[{j}]")
        self.virtual_hosts: tuple[CompiledVirtualHost, ...] = tuple(compiled)
        # Answers "no virtual host": it has no routes, so `match` falls through to None with no check.
        self._no_vhost = CompiledVirtualHost(None)
        self._host_memo: dict[str, CompiledVirtualHost] = {}

    @staticmethod
    def _match_connect(vh: CompiledVirtualHost, authority: str, path: str,
                       headers: Sequence[tuple[bytes, bytes]]) -> CompiledRoute | None:
        req = RequestView(authority, path, "CONNECT", headers)
        for route in vh._connect:
            if route.matches_rest(req):
                return route
        return None

    def virtual_host_for(self, authority: str) -> CompiledVirtualHost | None:
        vh = self._host_memo.get(authority) or self._resolve_host(authority)
        return None if vh is self._no_vhost else vh

    def _resolve_host(self, authority: str) -> CompiledVirtualHost:
        vh = self._domains.find(authority) or self._no_vhost
        memo = self._host_memo
        if len(memo) >= _HOST_MEMO_LIMIT:
            memo.clear()
        memo[authority] = vh
        return vh

    def match(
        self, authority: str, path: str, method: str, headers: Sequence[tuple[bytes, bytes]]
    ) -> CompiledRoute | None:
        """The first route of the matching virtual host that matches the request, or None."""
        vh = self._host_memo.get(authority) or self._resolve_host(authority)
        if method == "CONNECT":
            return self._match_connect(vh, authority, path, headers)
        path_only: str | None = None
        lowered: str | None = None
        req: RequestView | None = None
        for step in vh._steps:
            if type(step) is PrefixIndex:
                found = step.lookup(path)
                if found is not None:
                    return found
                continue
            kind = step._kind
            if kind == _PREFIX:
                if not path.startswith(step._value):
                    continue
            elif kind == _PREFIX_NOCASE:
                if lowered is None:
                    lowered = path.lower()
                if not lowered.startswith(step._value):
                    continue
            else:
                if path_only is None:
                    path_only = split_path(path)[0]
                if kind == _EXACT:
                    if path_only != step._value:
                        continue
                elif kind == _EXACT_NOCASE:
                    if path_only.lower() != step._value:
                        continue
                else:
                    regex = step._regex
                    assert regex is not None
                    if regex(path_only) is None:
                        continue
            # Path matched. A simple route (no methods, headers, query) needs nothing else.
            if step._simple:
                return step
            if req is None:
                req = RequestView(authority, path, method, headers)
            if step.matches_rest(req):
                return step
        return None

