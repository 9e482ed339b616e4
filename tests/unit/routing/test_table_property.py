"""RouteTable.match against a slow reference written straight from Envoy's rules.

The reference does no precompilation, no memo, no indexing: it walks the model every time. Pools of
domains, paths and values are small so that random requests often hit (and nearly hit) the routes.
"""

from __future__ import annotations

import re

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshpy.model.types import (
    ForwardAction,
    HeaderMatch,
    QueryMatch,
    Route,
    RouteConfig,
    RouteMatch,
    StringMatch,
    VirtualHost,
)
from meshpy.routing.table import RouteTable

Headers = list[tuple[bytes, bytes]]

# --- the reference -------------------------------------------------------------------------------------


def ref_virtual_host(rc: RouteConfig, authority: str) -> VirtualHost | None:
    host = authority
    if rc.ignore_port_in_host:
        colon = host.rfind(":")
        if colon != -1 and "]" not in host[colon:]:
            host = host[:colon]
    host = host.lower()
    domains = [(d.lower(), vh) for vh in rc.virtual_hosts for d in vh.domains]
    for d, vh in domains:
        if d == host:
            return vh
    suffixes = [
        (len(d), vh)
        for d, vh in domains
        if d.startswith("*") and d != "*" and len(host) > len(d) - 1 and host.endswith(d[1:])
    ]
    if suffixes:
        return max(suffixes, key=lambda x: x[0])[1]
    prefixes = [
        (len(d), vh)
        for d, vh in domains
        if d.endswith("*") and d != "*" and len(host) > len(d) - 1 and host.startswith(d[:-1])
    ]
    if prefixes:
        return max(prefixes, key=lambda x: x[0])[1]
    for d, vh in domains:
        if d == "*":
            return vh
    return None


def ref_path_and_query(path: str) -> tuple[str, str]:
    cut = len(path)
    for ch in "?#":
        if ch in path:
            cut = min(cut, path.index(ch))
    query = ""
    if cut < len(path) and path[cut] == "?":
        query = path[cut + 1 :].split("#")[0]
    return path[:cut], query


def ref_string(sm: StringMatch, value: str) -> bool:
    if sm.kind == "present":
        return True
    if sm.kind == "regex":
        return re.fullmatch(sm.value, value) is not None
    v, want = (value.lower(), sm.value.lower()) if sm.ignore_case else (value, sm.value)
    return {
        "exact": v == want,
        "prefix": v.startswith(want),
        "suffix": v.endswith(want),
        "contains": want in v,
    }[sm.kind]


def ref_header(hm: HeaderMatch, authority: str, path: str, method: str, headers: Headers) -> bool:
    pseudo = {":method": method, ":authority": authority, ":path": path, ":scheme": "http"}
    if hm.name in pseudo:
        values = [pseudo[hm.name]]
    else:
        values = [v.decode("latin-1") for n, v in headers if n.decode("latin-1") == hm.name]
    if not values:
        return hm.match.kind == "present" and hm.invert
    return any(ref_string(hm.match, v) for v in values) != hm.invert


def ref_query(qm: QueryMatch, query: str) -> bool:
    for part in query.split("&") if query else []:
        name, _, value = part.partition("=")
        if name == qm.name:
            return ref_string(qm.match, value)
    return False


def ref_route(r: Route, authority: str, path: str, method: str, headers: Headers) -> bool:
    m = r.match
    only, query = ref_path_and_query(path)
    if m.path_kind == "regex":
        ok = re.fullmatch(m.path, only) is not None
    else:
        a, b = (only, m.path) if m.case_sensitive else (only.lower(), m.path.lower())
        ok = a.startswith(b) if m.path_kind == "prefix" else a == b
    return (
        ok
        and (not m.methods or method in m.methods)
        and all(ref_header(h, authority, path, method, headers) for h in m.headers)
        and all(ref_query(q, query) for q in m.query)
    )


def ref_match(rc: RouteConfig, authority: str, path: str, method: str, headers: Headers) -> Route | None:
    vh = ref_virtual_host(rc, authority)
    if vh is None:
        return None
    for r in vh.routes:
        if ref_route(r, authority, path, method, headers):
            return r
    return None


# --- strategies ----------------------------------------------------------------------------------------

DOMAINS = [
    "foo.com",
    "a.foo.com",
    "*.foo.com",
    "*-bar.foo.com",
    "*o.com",
    "foo.*",
    "a.*",
    "a.foo.*",
    "*",
    "[::1]",
    "FOO.org",
]
HOSTS = [
    "foo.com",
    "a.foo.com",
    "x-bar.foo.com",
    "-bar.foo.com",
    "b.foo.com",
    "o.com",
    "zo.com",
    "foo.org",
    "FOO.ORG",
    "a.b",
    "a.",
    "foo.",
    "[::1]",
    "[::1]:80",
    "foo.com:8080",
    "A.FOO.COM:1",
    "foo.com:",
    "other",
]
PREFIXES = ["/", "", "/a", "/b", "/api", "/API", "/api/", "/v1/", "/a?x", "/x/y"]
EXACT_PATHS = ["/", "/a", "/api", "/api/v1", "/API/V1", "/x/y"]
REGEXES = ["/api/.*", "/[a-z]+", ".*", "/api/v[0-9]", "/(a|b)"]
SEGMENTS = ["a", "b", "api", "API", "v1", "x", "y"]
VALUES = ["", "1", "a", "A", "a,b", "GET", "http", "foo.com", "/api"]
REGEX_VALUES = ["[0-9]+", "a|b", ".*", "(?i)a"]
HEADER_NAMES = ["x-a", "x-b", "host", ":method", ":authority", ":path", ":scheme"]

string_matches = st.one_of(
    st.builds(
        StringMatch,
        kind=st.sampled_from(["exact", "prefix", "suffix", "contains"]),
        value=st.sampled_from(VALUES),
        ignore_case=st.booleans(),
    ),
    st.builds(
        StringMatch, kind=st.just("regex"), value=st.sampled_from(REGEX_VALUES), ignore_case=st.booleans()
    ),
    st.builds(StringMatch, kind=st.just("present")),
)


@st.composite
def route_matches(draw: st.DrawFn) -> RouteMatch:
    kind = draw(st.sampled_from(["prefix", "prefix", "prefix", "path", "regex"]))
    pool = {"prefix": PREFIXES, "path": EXACT_PATHS, "regex": REGEXES}[kind]
    conditions = draw(st.booleans())  # half the routes are simple, to exercise the indexed runs
    return RouteMatch(
        path_kind=kind,
        path=draw(st.sampled_from(pool)),
        case_sensitive=draw(st.booleans()) if draw(st.booleans()) else True,
        headers=tuple(
            draw(
                st.lists(
                    st.builds(
                        HeaderMatch,
                        name=st.sampled_from(HEADER_NAMES),
                        match=string_matches,
                        invert=st.booleans(),
                    ),
                    max_size=2,
                )
            )
        )
        if conditions
        else (),
        query=tuple(
            draw(
                st.lists(
                    st.builds(QueryMatch, name=st.sampled_from(["q", "x", ""]), match=string_matches),
                    max_size=2,
                )
            )
        )
        if conditions
        else (),
        methods=tuple(draw(st.lists(st.sampled_from(["GET", "POST"]), unique=True, max_size=2)))
        if conditions
        else (),
    )


@st.composite
def route_configs(draw: st.DrawFn) -> RouteConfig:
    domains = draw(st.lists(st.sampled_from(DOMAINS), unique_by=str.lower, min_size=1, max_size=6))
    n_vhosts = draw(st.integers(1, min(3, len(domains))))
    vhosts = []
    for i in range(n_vhosts):
        routes = draw(st.lists(route_matches(), max_size=12))
        vhosts.append(
            VirtualHost(
                name=f"vh{i}",
                domains=tuple(domains[i::n_vhosts]),
                routes=tuple(
                    Route(name=f"vh{i}-r{j}", match=m, action=ForwardAction(cluster="c"))
                    for j, m in enumerate(routes)
                ),
            )
        )
    return RouteConfig(name="rc", virtual_hosts=tuple(vhosts), ignore_port_in_host=draw(st.booleans()))


@st.composite
def request_paths(draw: st.DrawFn) -> str:
    path = "/" + "/".join(draw(st.lists(st.sampled_from(SEGMENTS), max_size=3)))
    if draw(st.booleans()):
        pairs = draw(
            st.lists(
                st.tuples(
                    st.sampled_from(["q", "x", "qq", ""]),
                    st.sampled_from(["", "=", "=1", "=a", "=A", "=a%20b"]),
                ),
                max_size=3,
            )
        )
        path += "?" + "&".join(k + v for k, v in pairs)
    if draw(st.integers(0, 5)) == 0:
        path += "#" + draw(st.sampled_from(["", "f", "?q=1"]))
    if draw(st.integers(0, 20)) == 0:
        path = draw(st.sampled_from(["*", "", "api"]))
    return path


request_headers = st.lists(
    st.tuples(
        st.sampled_from([b"x-a", b"x-b", b"host", b"x-c"]),
        st.sampled_from([v.encode() for v in VALUES] + [b"2"]),
    ),
    max_size=4,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rc=route_configs(),
    requests=st.lists(
        st.tuples(
            st.sampled_from(HOSTS), request_paths(), st.sampled_from(["GET", "POST", "PUT"]), request_headers
        ),
        min_size=1,
        max_size=12,
    ),
)
def test_match_agrees_with_reference(rc: RouteConfig, requests: list[tuple[str, str, str, Headers]]) -> None:
    t = RouteTable(rc)
    for authority, path, method, headers in requests:
        expected = ref_match(rc, authority, path, method, headers)
        got = t.match(authority, path, method, headers)
        # Identity, not equality: two routes can be equal models at different positions.
        assert (got.route if got else None) is expected, (authority, path, method, headers)
        vh = t.virtual_host_for(authority)
        ref_vh = ref_virtual_host(rc, authority)
        assert (vh.virtual_host if vh else None) is ref_vh


@settings(max_examples=300, deadline=None)
@given(
    prefixes=st.lists(
        st.sampled_from(["/a", "/b", "/ab", "/abc", "/b/", "/", "", "/x"]), min_size=1, max_size=20
    ),
    exact=st.lists(st.sampled_from(["/a", "/ab", "/"]), max_size=3),
    path=request_paths(),
)
def test_indexed_prefix_runs_agree_with_reference(prefixes: list[str], exact: list[str], path: str) -> None:
    # Long runs of simple routes with shared lengths: exactly the shape that gets indexed.
    routes = [
        Route(name=f"p{i}", match=RouteMatch(path=p), action=ForwardAction(cluster="c"))
        for i, p in enumerate(prefixes)
    ]
    routes[::3] = [
        Route(name=f"e{i}", match=RouteMatch(path_kind="path", path=p), action=ForwardAction(cluster="c"))
        for i, p in enumerate(exact)
    ][: len(routes[::3])] + routes[::3][len(exact) :]
    rc = RouteConfig(name="rc", virtual_hosts=(VirtualHost(name="v", domains=("*",), routes=tuple(routes)),))
    got = RouteTable(rc).match("h", path, "GET", [])
    assert (got.route if got else None) is ref_match(rc, "h", path, "GET", [])
