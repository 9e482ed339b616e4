"""RouteTable.match against a slow reference written straight from Envoy's rules.

The reference does no precompilation, no memo, no indexing: it walks the model every time. Pools of
domains, paths and values are small so that random requests often hit (and nearly hit) the routes.
"""

from __future__ import annotations

import re

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshpy.model.routes import (
    ForwardAction,
    HeaderMatch,
    PathMatchKind,
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
# Requests are derived from the generated config (a domain with its wildcard filled in, a route's path
# with its case flipped, a matcher's value), so that most of them reach, and nearly miss, some route.

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
HOSTS = ["other", "a.", "foo.", "-bar.foo.com", "[::1]:80", "foo.com:", "A.FOO.COM:1"]
PREFIXES = ["/", "", "/a", "/b", "/api", "/API", "/api/", "/v1/", "/a?x", "/x/y"]
EXACT_PATHS = ["/", "/a", "/api", "/api/v1", "/API/V1", "/x/y"]
# Each regex with a few paths it matches (or almost does).
REGEXES = {
    "/api/.*": ["/api/x", "/api/"],
    "/[a-z]+": ["/abc", "/Abc"],
    ".*": ["/z"],
    "/api/v[0-9]": ["/api/v1", "/api/v12"],
    "/(a|b)": ["/a", "/b", "/c"],
}
SEGMENTS = ["a", "A", "b", "api", "API", "v1", "x"]
VALUES = ["", "1", "a", "A", "a,b", "foo.com", "/api"]
PSEUDO_VALUES = {
    ":method": ["GET", "get", "POST", "G"],
    ":scheme": ["http", "https", "HTTP", "h"],
    ":authority": ["foo.com", "FOO.com", "foo", ".com"],
    ":path": ["/a", "/a?x", "/", "?x"],
}
REGEX_VALUES = ["[0-9]+", "a|b", ".*", "(?i)a", "GET|POST", "https?"]
HEADER_NAMES = ["x-a", "x-a", "x-b", "host", ":method", ":authority", ":path", ":scheme"]
QUERY_NAMES = ["q", "x", ""]
# Paths that sit on the edges: a "?" right after a prefix, repeated query keys, "?" inside a fragment.
EDGE_PATHS = ["/a?x=1", "/a?x", "/api?q=1&q=a", "/?q=a&q=1", "/?q&q=1", "/a#?x", "/API/V1?q=", "/b?", "*", ""]


def string_matches(values: list[str]) -> st.SearchStrategy[StringMatch]:
    return st.one_of(
        st.builds(
            StringMatch,
            kind=st.sampled_from(["exact", "prefix", "suffix", "contains"]),
            value=st.sampled_from(values),
            ignore_case=st.booleans(),
        ),
        st.builds(
            StringMatch, kind=st.just("regex"), value=st.sampled_from(REGEX_VALUES), ignore_case=st.booleans()
        ),
        st.builds(StringMatch, kind=st.just("present")),
    )


@st.composite
def header_matches(draw: st.DrawFn) -> HeaderMatch:
    name = draw(st.sampled_from(HEADER_NAMES))
    match = draw(string_matches(PSEUDO_VALUES.get(name, VALUES)))
    return HeaderMatch(name=name, match=match, invert=draw(st.booleans()))


query_matches = st.builds(QueryMatch, name=st.sampled_from(QUERY_NAMES), match=string_matches(VALUES))


@st.composite
def route_matches(draw: st.DrawFn) -> RouteMatch:
    kinds: list[PathMatchKind] = ["prefix", "prefix", "prefix", "path", "regex"]
    kind = draw(st.sampled_from(kinds))
    pool = {"prefix": PREFIXES, "path": EXACT_PATHS, "regex": list(REGEXES)}[kind]
    conditions = draw(st.booleans())  # half the routes are simple, to exercise the indexed runs
    return RouteMatch(
        path_kind=kind,
        path=draw(st.sampled_from(pool)),
        case_sensitive=draw(st.booleans()),
        headers=tuple(draw(st.lists(header_matches(), max_size=2))) if conditions else (),
        query=tuple(draw(st.lists(query_matches, max_size=2))) if conditions else (),
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


def flip_case(draw: st.DrawFn, text: str) -> str:
    return draw(st.sampled_from([text, text.upper(), text.lower(), text.swapcase()]))


@st.composite
def authorities(draw: st.DrawFn, rc: RouteConfig) -> str:
    domains = [d for vh in rc.virtual_hosts for d in vh.domains]
    d = draw(st.sampled_from(domains if draw(st.integers(0, 4)) else HOSTS))
    fill = draw(st.sampled_from(["x", "a.b", ""]))
    if d == "*":
        d = draw(st.sampled_from(["some.host", "foo.com"]))
    elif d.startswith("*"):
        d = fill + d[1:]
    elif d.endswith("*"):
        d = d[:-1] + fill
    return flip_case(draw, d) + draw(st.sampled_from(["", "", ":80", ":8080", ":"]))


@st.composite
def request_paths(draw: st.DrawFn, rc: RouteConfig | None = None) -> str:
    matches = [r.match for vh in (rc.virtual_hosts if rc else ()) for r in vh.routes]
    base = ""
    if matches and draw(st.integers(0, 3)) > 0:
        m = draw(st.sampled_from(matches))
        base = draw(st.sampled_from(REGEXES[m.path])) if m.path_kind == "regex" else m.path
        base = flip_case(draw, base)
    path = base + "/" + "/".join(draw(st.lists(st.sampled_from(SEGMENTS), max_size=2)))
    if draw(st.booleans()):
        path = (base or path[:-1]) or "/"  # the route's own path, as an exact route wants it
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
    if draw(st.integers(0, 5)) == 0:
        path = draw(st.sampled_from(EDGE_PATHS))
    return path


request_headers = st.lists(
    st.tuples(
        st.sampled_from([b"x-a", b"x-a", b"x-a", b"x-b", b"host", b"x-c"]),
        st.sampled_from([v.encode() for v in VALUES] + [b"2", b"B", b"foo.COM"]),
    ),
    max_size=4,
)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rc=route_configs(), data=st.data())
def test_match_agrees_with_reference(rc: RouteConfig, data: st.DataObject) -> None:
    t = RouteTable(rc)
    for _ in range(data.draw(st.integers(1, 12))):
        authority = data.draw(authorities(rc))
        path = data.draw(request_paths(rc))
        method = data.draw(st.sampled_from(["GET", "POST", "PUT"]))
        headers = data.draw(request_headers)
        expected = ref_match(rc, authority, path, method, headers)
        got = t.match(authority, path, method, headers)
        # Identity, not equality: two routes can be equal models at different positions.
        assert (got.route if got else None) is expected, (authority, path, method, headers)
        vh = t.virtual_host_for(authority)
        assert (vh.virtual_host if vh else None) is ref_virtual_host(rc, authority)


@settings(max_examples=200, deadline=None)
@given(
    matchers=st.lists(
        st.tuples(st.lists(header_matches(), max_size=2), st.lists(query_matches, max_size=2)),
        min_size=1,
        max_size=6,
    ),
    requests=st.lists(
        st.tuples(
            request_paths(),
            st.sampled_from(["GET", "POST"]),
            st.sampled_from(["foo.com", "FOO.com", "x.foo.com"]),
            request_headers,
        ),
        min_size=1,
        max_size=10,
    ),
)
def test_conditions_agree_with_reference(
    matchers: list[tuple[list[HeaderMatch], list[QueryMatch]]], requests: list[tuple[str, str, str, Headers]]
) -> None:
    # Every route passes the path test, so only header and query semantics decide. Each route is also
    # checked on its own, so an earlier route that matches cannot hide a disagreement in a later one.
    routes = tuple(
        Route(
            name=f"r{i}",
            match=RouteMatch(path="", headers=tuple(h), query=tuple(q)),
            action=ForwardAction(cluster="c"),
        )
        for i, (h, q) in enumerate(matchers)
    )
    rc = RouteConfig(name="rc", virtual_hosts=(VirtualHost(name="v", domains=("*",), routes=routes),))
    t = RouteTable(rc)
    singles = [
        (
            r,
            RouteTable(
                RouteConfig(name="one", virtual_hosts=(VirtualHost(name="v", domains=("*",), routes=(r,)),))
            ),
        )
        for r in routes
    ]
    for path, method, authority, headers in requests:
        got = t.match(authority, path, method, headers)
        expected = ref_match(rc, authority, path, method, headers)
        assert (got.route if got else None) is expected, (path, method, authority, headers)
        for r, single in singles:
            alone = single.match(authority, path, method, headers) is not None
            assert alone is ref_route(r, authority, path, method, headers), (
                r,
                path,
                method,
                authority,
                headers,
            )


@settings(max_examples=300, deadline=None)
@given(
    prefixes=st.sampled_from(
        [["/a", "/b", "/ab", "/abc", "/b/", "/", "", "/x"], ["/a", "/b", "/x", "/ab", "/ba"]]
    ).flatmap(lambda pool: st.lists(st.sampled_from(pool), min_size=1, max_size=20)),
    exact=st.lists(st.sampled_from(["/a", "/ab", "/"]), max_size=3),
    path=request_paths(),
)
def test_indexed_prefix_runs_agree_with_reference(prefixes: list[str], exact: list[str], path: str) -> None:
    # Long runs of simple routes: the shape that gets matched as one block, by regex alternation
    # (many distinct lengths) or by one dict probe per length (the narrow pool).
    routes = [
        Route(name=f"p{i}", match=RouteMatch(path=p), action=ForwardAction(cluster="c"))
        for i, p in enumerate(prefixes)
    ]
    for slot, p in zip(range(0, len(routes), 3), exact, strict=False):
        routes[slot] = Route(
            name=f"e{slot}", match=RouteMatch(path_kind="path", path=p), action=ForwardAction(cluster="c")
        )
    rc = RouteConfig(name="rc", virtual_hosts=(VirtualHost(name="v", domains=("*",), routes=tuple(routes)),))
    got = RouteTable(rc).match("h", path, "GET", [])
    assert (got.route if got else None) is ref_match(rc, "h", path, "GET", [])
