"""Route table: host selection, path/header/query/method matching, actions, compile-time errors.

Where a case is marked "envoy 1.40", the expected value was observed on the envoy 1.40 binary with the
equivalent Envoy route config.
"""

from __future__ import annotations

import pytest

from meshpy.errors import ConfigError
from meshpy.model.routes import (
    DirectResponseAction,
    ForwardAction,
    HeaderEdits,
    HeaderMatch,
    HeaderValue,
    QueryMatch,
    RedirectAction,
    RegexRewrite,
    Route,
    RouteConfig,
    RouteMatch,
    StringMatch,
    StringMatchKind,
    VirtualHost,
    WeightedCluster,
)
from meshpy.routing.table import CompiledRoute, RouteTable

Headers = list[tuple[bytes, bytes]]


def fwd(cluster: str = "c", **kw: object) -> ForwardAction:
    return ForwardAction(cluster=cluster, **kw)  # type: ignore[arg-type]


def route(name: str, path: str = "/", kind: str = "prefix", **kw: object) -> Route:
    action = kw.pop("action", None) or fwd(name)
    return Route(name=name, match=RouteMatch(path_kind=kind, path=path, **kw), action=action)  # type: ignore[arg-type]


def table(*routes: Route, domains: tuple[str, ...] = ("*",), **rc_kw: object) -> RouteTable:
    vh = VirtualHost(name="vh", domains=domains, routes=routes)
    return RouteTable(RouteConfig(name="rc", virtual_hosts=(vh,), **rc_kw))  # type: ignore[arg-type]


def name_of(
    t: RouteTable, path: str, *, host: str = "h", method: str = "GET", headers: Headers | None = None
) -> str | None:
    r = t.match(host, path, method, headers or [])
    return None if r is None else r.route.name


def hdr(
    name: str, kind: StringMatchKind, value: str = "", *, invert: bool = False, ignore_case: bool = False
) -> HeaderMatch:
    return HeaderMatch(
        name=name, match=StringMatch(kind=kind, value=value, ignore_case=ignore_case), invert=invert
    )


# --- virtual host selection -------------------------------------------------------------------------


@pytest.fixture
def hosts() -> RouteTable:
    def vh(name: str, *domains: str) -> VirtualHost:
        return VirtualHost(name=name, domains=domains, routes=(route(name),))

    return RouteTable(
        RouteConfig(
            name="rc",
            virtual_hosts=(
                vh("exact", "api.foo.com", "Mixed.Case.com"),
                vh("suffix-short", "*.foo.com"),
                vh("suffix-long", "*-bar.foo.com"),
                vh("prefix-short", "api.*"),
                vh("prefix-long", "api.foo.*"),
                vh("default", "*"),
            ),
        )
    )


@pytest.mark.parametrize(
    ("authority", "expected"),
    [
        ("api.foo.com", "exact"),
        ("API.FOO.COM", "exact"),
        ("mixed.case.com", "exact"),
        ("api.foo.com:8080", "exact"),
        ("x.foo.com", "suffix-short"),
        ("x-bar.foo.com", "suffix-long"),  # longest suffix wins
        ("-bar.foo.com", "suffix-short"),  # "*" must stand for at least one character
        (".foo.com", "default"),
        ("api.foo.org", "prefix-long"),
        ("api.org", "prefix-short"),
        ("api.", "default"),
        ("other.org", "default"),
        ("", "default"),
    ],
)
def test_virtual_host_selection_follows_envoy_order(hosts: RouteTable, authority: str, expected: str) -> None:
    assert name_of(hosts, "/", host=authority) == expected


def test_suffix_wildcard_beats_prefix_wildcard_of_any_length() -> None:
    t = RouteTable(
        RouteConfig(
            name="rc",
            virtual_hosts=(
                VirtualHost(name="p", domains=("www.example.*",), routes=(route("p"),)),
                VirtualHost(name="s", domains=("*.com",), routes=(route("s"),)),
            ),
        )
    )
    assert name_of(t, "/", host="www.example.com") == "s"
    assert name_of(t, "/", host="www.example.org") == "p"


@pytest.mark.parametrize(
    ("authority", "expected"),
    [
        ("[::1]:80", "v6"),
        ("[::1]", "v6"),
        ("foo.com:", "foo"),  # envoy 1.40: stripped at the last ":" even with no digits
        ("foo.com:abc", "foo"),  # envoy 1.40: the port is not validated
    ],
)
def test_port_is_stripped_from_authority(authority: str, expected: str) -> None:
    t = RouteTable(
        RouteConfig(
            name="rc",
            virtual_hosts=(
                VirtualHost(name="v6", domains=("[::1]",), routes=(route("v6"),)),
                VirtualHost(name="foo", domains=("foo.com",), routes=(route("foo"),)),
            ),
        )
    )
    assert name_of(t, "/", host=authority) == expected


def test_port_is_kept_when_ignore_port_in_host_is_off() -> None:
    t = RouteTable(
        RouteConfig(
            name="rc",
            ignore_port_in_host=False,
            virtual_hosts=(
                VirtualHost(name="with-port", domains=("foo.com:8080",), routes=(route("with-port"),)),
                VirtualHost(name="bare", domains=("foo.com",), routes=(route("bare"),)),
            ),
        )
    )
    assert name_of(t, "/", host="foo.com:8080") == "with-port"
    assert name_of(t, "/", host="foo.com") == "bare"
    assert name_of(t, "/", host="foo.com:9090") is None


def test_no_virtual_host_means_no_route() -> None:
    t = table(route("r"), domains=("foo.com",))
    assert t.match("bar.com", "/", "GET", []) is None
    assert t.virtual_host_for("bar.com") is None
    vh = t.virtual_host_for("FOO.com")
    assert vh is not None and vh.name == "vh"


def test_host_memo_is_bounded_and_answers_stay_right() -> None:
    t = table(route("r"), domains=("foo.com",))
    for i in range(10_000):
        assert t.match(f"h{i}.example", "/", "GET", []) is None
    assert len(t._host_memo) <= 4096
    assert name_of(t, "/", host="foo.com") == "r"


@pytest.mark.parametrize(
    ("domains", "reason"),
    [
        (("foo.com", "FOO.com"), "duplicate"),
        (("*", "*"), "duplicate"),
        (("*.foo.com", "*.foo.com"), "duplicate"),
        (("foo.*.com",), "wildcard"),
        (("*foo*",), "wildcard"),
        (("",), "wildcard"),
    ],
)
def test_bad_domains_are_config_errors(domains: tuple[str, ...], reason: str) -> None:
    with pytest.raises(ConfigError) as exc:
        table(route("r"), domains=domains)
    assert reason in str(exc.value)
    assert exc.value.issues[0].path.startswith("virtual_hosts[0].domains[")


# --- path matching -------------------------------------------------------------------------------------


def test_first_matching_route_wins() -> None:
    t = table(route("api-v1", "/api/v1"), route("api", "/api"), route("api-v1-late", "/api/v1"), route("all"))
    assert name_of(t, "/api/v1/x") == "api-v1"
    assert name_of(t, "/api/v2") == "api"
    assert name_of(t, "/other") == "all"


def test_prefix_sees_the_path_and_the_query_cannot_extend_it() -> None:
    t = table(route("q", "/p?x"), route("p", "/p"), route("rest"))
    assert name_of(t, "/p?x=1") == "p"  # envoy 1.40: prefix "/p?x" does not match "/p?x=1"
    assert name_of(t, "/pa") == "p"
    assert name_of(t, "/q") == "rest"


def test_prefix_does_not_match_a_non_slash_request_target() -> None:
    t = table(route("root", "/"))
    assert name_of(t, "*", method="OPTIONS") is None


def test_case_insensitive_prefix() -> None:
    t = table(route("ci", "/API", case_sensitive=False), route("cs", "/Other"))
    assert name_of(t, "/api/x") == "ci"
    assert name_of(t, "/ApI") == "ci"
    assert name_of(t, "/other") is None


def test_exact_path_ignores_query_and_fragment() -> None:
    t = table(route("e", "/e", "path"), route("E", "/E", "path", case_sensitive=False))
    assert name_of(t, "/e") == "e"
    assert name_of(t, "/e?z=1") == "e"
    assert name_of(t, "/e#frag") == "e"
    assert name_of(t, "/e/") is None
    assert name_of(t, "/e?") == "e"
    assert name_of(t, "/E") == "E"
    assert name_of(t, "/e2") is None


def test_regex_must_match_the_whole_path_without_query() -> None:
    t = table(route("rx", "/users/[0-9]+", "regex"), route("RX", "/Items", "regex", case_sensitive=False))
    assert name_of(t, "/users/42") == "rx"
    assert name_of(t, "/users/42?x=y") == "rx"
    assert name_of(t, "/users/42/edit") is None
    assert name_of(t, "/x/users/42") is None
    assert name_of(t, "/Items") == "RX"
    assert name_of(t, "/items") is None  # Envoy ignores case_sensitive for regex routes


def test_indexed_run_of_prefix_routes_keeps_first_match_order() -> None:
    # Enough simple routes with shared lengths to be indexed; the order still decides.
    routes = [
        route("exact-ab", "/ab", "path"),
        route("ab", "/ab"),
        route("aa", "/aa"),
        route("a", "/a"),
        route("b", "/b"),
        route("abc", "/abc"),  # never reached for /abc...: "/ab" comes first
        route("hdr", "/x", headers=(hdr("x-a", "present"),)),
        route("x1", "/x1"),
        route("x2", "/x2"),
        route("x3", "/x3"),
        route("x4", "/x4"),
        route("root", "/"),
    ]
    t = table(*routes)
    blocks = [s for s in t.virtual_hosts[0]._steps if not isinstance(s, CompiledRoute)]
    assert len(blocks) == 2, "expected two indexed runs around the header route"
    assert blocks[0]._regex is not None  # 4 length keys for 6 routes: one regex alternation
    assert name_of(t, "/ab") == "exact-ab"
    assert name_of(t, "/ab?q") == "exact-ab"
    assert name_of(t, "/abc") == "ab"
    assert name_of(t, "/aax") == "aa"
    assert name_of(t, "/a") == "a"
    assert name_of(t, "/b") == "b"
    assert name_of(t, "/x1", headers=[(b"x-a", b"")]) == "hdr"
    assert name_of(t, "/x1") == "x1"
    assert name_of(t, "/x4/y") == "x4"
    assert name_of(t, "/z") == "root"
    assert name_of(t, "") is None


def test_indexed_run_by_length_keeps_first_match_order() -> None:
    # Many routes, few distinct lengths: matched with one dict probe per length.
    names = [f"/s{i:02d}/" for i in range(16)]
    routes = [route("e", "/s03/", "path"), *(route(n, n) for n in names), route("short", "/s")]
    t = table(*routes)
    (block,) = t.virtual_hosts[0]._steps
    assert not isinstance(block, CompiledRoute) and block._regex is None
    assert name_of(t, "/s03/") == "e"
    assert name_of(t, "/s03/?x") == "e"
    assert name_of(t, "/s03/x") == "/s03/"
    assert name_of(t, "/s15/x?y") == "/s15/"
    assert name_of(t, "/s99") == "short"
    assert name_of(t, "/t") is None
    assert name_of(t, "/s") == "short"


# --- headers, query, methods ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("matcher", "headers", "expected"),
    [
        (hdr("x-a", "exact", "1"), [(b"x-a", b"1")], True),
        (hdr("x-a", "exact", "1"), [(b"x-a", b"2")], False),
        (hdr("x-a", "exact", "1"), [], False),
        (hdr("x-a", "exact", "1", invert=True), [(b"x-a", b"2")], True),
        (hdr("x-a", "exact", "1", invert=True), [], False),  # envoy 1.40: absent never matches a value
        (hdr("x-a", "present"), [(b"x-a", b"")], True),
        (hdr("x-a", "present"), [], False),
        (hdr("x-a", "present", invert=True), [], True),  # present_match: false
        (hdr("x-a", "present", invert=True), [(b"x-a", b"v")], False),
        (hdr("x-a", "prefix", "ab"), [(b"x-a", b"abc")], True),
        (hdr("x-a", "suffix", "bc"), [(b"x-a", b"abc")], True),
        (hdr("x-a", "contains", "b"), [(b"x-a", b"abc")], True),
        (hdr("x-a", "contains", "B", ignore_case=True), [(b"x-a", b"abc")], True),
        (hdr("x-a", "exact", "ABC", ignore_case=True), [(b"x-a", b"aBc")], True),
        (hdr("x-a", "exact", "ABC"), [(b"x-a", b"aBc")], False),
        (hdr("x-a", "regex", "[0-9]+"), [(b"x-a", b"123")], True),
        (hdr("x-a", "regex", "[0-9]+"), [(b"x-a", b"123a")], False),
        (hdr("x-a", "regex", "abc", ignore_case=True), [(b"x-a", b"ABC")], False),  # Envoy ignores it
        # envoy 1.40: several lines match when any one line matches, never the ","-joined value.
        (hdr("x-a", "exact", "b"), [(b"x-a", b"a"), (b"x-a", b"b")], True),
        (hdr("x-a", "exact", "a,b"), [(b"x-a", b"a"), (b"x-a", b"b")], False),
        (hdr("x-a", "exact", "a,b"), [(b"x-a", b"a,b")], True),
        (hdr("x-a", "exact", "b", invert=True), [(b"x-a", b"a"), (b"x-a", b"b")], False),
        (hdr("x-a", "exact", "b", invert=True), [(b"x-a", b"a"), (b"x-a", b"c")], True),
        (hdr("x-a", "exact", "caf\u00e9"), [(b"x-a", "caf\u00e9".encode())], True),  # bytes compare
        (hdr(":method", "exact", "GET"), [], True),
        (hdr(":authority", "exact", "h"), [], True),
        (hdr(":authority", "exact", "H"), [], False),
        (hdr(":method", "exact", "get"), [], False),
        (hdr(":method", "exact", "get", ignore_case=True), [], True),
        (hdr(":path", "prefix", "/x?"), [], True),
        (hdr(":scheme", "exact", "http"), [], True),
        (hdr(":scheme", "exact", "https"), [], False),
        (hdr("host", "exact", "wire"), [(b"host", b"wire")], True),
    ],
)
def test_header_matchers(matcher: HeaderMatch, headers: Headers, expected: bool) -> None:
    t = table(route("hm", "/", headers=(matcher,)))
    assert (name_of(t, "/x?q", headers=headers) == "hm") is expected


def test_all_header_matchers_must_match() -> None:
    t = table(route("both", headers=(hdr("x-a", "exact", "1"), hdr("x-b", "present"))), route("rest"))
    assert name_of(t, "/", headers=[(b"x-a", b"1"), (b"x-b", b"")]) == "both"
    assert name_of(t, "/", headers=[(b"x-a", b"1")]) == "rest"


@pytest.mark.parametrize(
    ("matcher", "path", "expected"),
    [
        (QueryMatch(name="q", match=StringMatch(kind="exact", value="1")), "/?q=1", True),
        (QueryMatch(name="q", match=StringMatch(kind="exact", value="1")), "/?a=2&q=1", True),
        (QueryMatch(name="q", match=StringMatch(kind="exact", value="2")), "/?q=1&q=2", False),  # first
        (QueryMatch(name="q", match=StringMatch(kind="exact", value="2")), "/?q=2&q=1", True),
        (QueryMatch(name="q", match=StringMatch(kind="present")), "/?q", True),
        (QueryMatch(name="q", match=StringMatch(kind="present")), "/?q=", True),
        (QueryMatch(name="q", match=StringMatch(kind="present")), "/?qq=1", False),
        (QueryMatch(name="q", match=StringMatch(kind="present")), "/", False),
        (QueryMatch(name="q", match=StringMatch(kind="exact", value="")), "/?q", True),
        (QueryMatch(name="q", match=StringMatch(kind="exact", value="a b")), "/?q=a%20b", False),  # raw
        (QueryMatch(name="q", match=StringMatch(kind="exact", value="a%20b")), "/?q=a%20b", True),
        (QueryMatch(name="q", match=StringMatch(kind="exact", value="x")), "/?q=x#frag", True),
        (QueryMatch(name="q", match=StringMatch(kind="present")), "/#?q=1", False),
        (QueryMatch(name="q", match=StringMatch(kind="prefix", value="A", ignore_case=True)), "/?q=ab", True),
    ],
)
def test_query_matchers(matcher: QueryMatch, path: str, expected: bool) -> None:
    t = table(route("qm", "/", query=(matcher,)))
    assert (name_of(t, path) == "qm") is expected


def test_methods() -> None:
    t = table(route("write", methods=("POST", "PUT")), route("any"))
    assert name_of(t, "/", method="POST") == "write"
    assert name_of(t, "/", method="GET") == "any"


def test_headers_are_not_decoded_when_no_route_needs_them() -> None:
    class Exploding(list[tuple[bytes, bytes]]):
        def __iter__(self):  # type: ignore[no-untyped-def]
            raise AssertionError("headers were read")

    t = table(route("a", "/a"), route("b", "/b", "path"), route("c", "/c.*", "regex"))
    for path in ("/a", "/b", "/cc", "/zz"):
        t.match("h", path, "GET", Exploding())


# --- actions -------------------------------------------------------------------------------------------


def test_pick_cluster_single_and_weighted() -> None:
    assert table(route("r", action=fwd("only"))).match("h", "/", "GET", []).pick_cluster() == "only"  # type: ignore[union-attr]
    weighted = ForwardAction(
        weighted=(
            WeightedCluster(name="zero", weight=0),
            WeightedCluster(name="a", weight=1),
            WeightedCluster(name="b", weight=3),
            WeightedCluster(name="tail-zero", weight=0),
        )
    )
    values = iter([0.0, 0.2499, 0.25, 0.9999999, 1.0 - 2**-53, 1.0])
    t = RouteTable(
        RouteConfig(
            name="rc",
            virtual_hosts=(VirtualHost(name="v", domains=("*",), routes=(route("w", action=weighted),)),),
        ),
        rand=lambda: next(values),
    )
    r = t.match("h", "/", "GET", [])
    assert r is not None
    assert [r.pick_cluster() for _ in range(6)] == ["a", "a", "b", "b", "b", "b"]


def test_pick_cluster_distribution_follows_weights() -> None:
    import random

    rng = random.Random(7)
    weighted = ForwardAction(
        weighted=(WeightedCluster(name="a", weight=1), WeightedCluster(name="b", weight=9))
    )
    t = RouteTable(
        RouteConfig(
            name="rc",
            virtual_hosts=(VirtualHost(name="v", domains=("*",), routes=(route("w", action=weighted),)),),
        ),
        rand=rng.random,
    )
    r = t.match("h", "/", "GET", [])
    assert r is not None
    picks = [r.pick_cluster() for _ in range(10_000)]
    assert 800 < picks.count("a") < 1200


@pytest.mark.parametrize(
    ("match_kw", "action", "path", "expected"),
    [
        ({"path": "/api"}, fwd(prefix_rewrite="/v1"), "/api/x?q=1", "/v1/x?q=1"),
        ({"path": "/api/"}, fwd(prefix_rewrite="/"), "/api/x", "/x"),
        ({"path": "/API", "case_sensitive": False}, fwd(prefix_rewrite="/v2"), "/api/x", "/v2/x"),
        ({"path": "/old", "path_kind": "path"}, fwd(prefix_rewrite="/new"), "/old?a=b", "/new?a=b"),
        ({"path": "/u/[0-9]+", "path_kind": "regex"}, fwd(prefix_rewrite="/user"), "/u/12?x", "/user?x"),
        (
            {"path": "/"},
            fwd(regex_rewrite=RegexRewrite(pattern="^/svc/([^/]+)/(.*)$", substitution="/\\2/instance/\\1")),
            "/svc/a/b/c?q=/svc/z/",
            "/b/c/instance/a?q=/svc/z/",
        ),
        ({"path": "/"}, fwd(regex_rewrite=RegexRewrite(pattern="o", substitution="0")), "/foo?o", "/f00?o"),
        ({"path": "/"}, fwd(regex_rewrite=RegexRewrite(pattern="^/a", substitution="[\\0]")), "/ab", "[/a]b"),
        ({"path": "/"}, fwd(), "/keep?x", "/keep?x"),
    ],
)
def test_rewrite_path(match_kw: dict[str, object], action: ForwardAction, path: str, expected: str) -> None:
    kind = str(match_kw.pop("path_kind", "prefix"))
    p = str(match_kw.pop("path"))
    t = table(route("r", p, kind, action=action, **match_kw))
    r = t.match("h", path, "GET", [])
    assert r is not None
    assert r.rewrite_path(path) == expected


@pytest.mark.parametrize(
    ("action", "authority", "path", "expected"),
    [
        # All of these were observed on envoy 1.40 with the equivalent config.
        (RedirectAction(scheme="https"), "foo:80", "/redir?a=1", "https://foo/redir?a=1"),
        (RedirectAction(scheme="https"), "foo:8080", "/redir?a=1", "https://foo:8080/redir?a=1"),
        (
            RedirectAction(prefix_rewrite="/new", strip_query=True, port=8443),
            "foo:80",
            "/rd2/z?a=1",
            "http://foo:8443/new/z",
        ),
        (RedirectAction(path="/x?y=1", strip_query=True), "foo:80", "/rd3/z?a=1", "http://foo:80/x?y=1"),
        # The rest follow Envoy's newUri source.
        (RedirectAction(path="/x"), "foo", "/a?b=c", "http://foo/x?b=c"),
        (RedirectAction(path="x", strip_query=True), "foo", "/a?b=c", "http://foo/x"),
        (RedirectAction(host="bar.com"), "foo:8080", "/a", "http://bar.com/a"),
        (RedirectAction(host="bar.com", port=9000), "foo:8080", "/a", "http://bar.com:9000/a"),
        (RedirectAction(port=9000), "[::1]:8080", "/a", "http://[::1]:9000/a"),
        (RedirectAction(scheme="https"), "[::1]:80", "/a", "https://[::1]/a"),
        (RedirectAction(scheme="https"), "[::1]", "/a", "https://[::1]/a"),
        (RedirectAction(strip_query=True), "foo", "/a?b", "http://foo/a"),
    ],
)
def test_redirect_location(action: RedirectAction, authority: str, path: str, expected: str) -> None:
    prefix = "/rd2" if action.prefix_rewrite else "/"
    t = table(route("r", prefix, action=action))
    r = t.match(authority, path, "GET", [])
    assert r is not None
    assert r.redirect_location("http", authority, path) == expected


def test_redirect_location_on_a_forward_route_is_an_error() -> None:
    r = table(route("r")).match("h", "/", "GET", [])
    assert r is not None
    with pytest.raises(ValueError, match="not a redirect"):
        r.redirect_location("http", "h", "/")
    d = table(route("d", action=DirectResponseAction(status=204))).match("h", "/", "GET", [])
    assert d is not None
    assert d.rewrite_path("/x") == "/x"
    with pytest.raises(ValueError, match="cluster"):
        d.pick_cluster()


def test_header_edits_are_merged_route_then_vhost_then_route_config() -> None:
    def set_(name: str, value: str) -> HeaderEdits:
        return HeaderEdits(add=(HeaderValue(name=name, value=value, append="overwrite"),))

    r = Route(
        name="r", action=fwd(), request_headers=set_("x-o", "route"), response_headers=set_("x-p", "route")
    )
    vh = VirtualHost(name="v", domains=("*",), routes=(r,), request_headers=set_("x-o", "vhost"))
    rc = RouteConfig(name="rc", virtual_hosts=(vh,), request_headers=set_("x-o", "rc"))
    cr = RouteTable(rc).match("h", "/", "GET", [])
    assert cr is not None
    headers: Headers = [(b"x-o", b"client")]
    (edits,) = cr.upstream_filters  # the route's header edits are a filter on the upstream head
    edits.on_upstream(None, headers)  # type: ignore[arg-type]  # (it reads no exchange)
    assert headers == [(b"x-o", b"rc")]  # envoy 1.40: least specific level is applied last and wins
    response: Headers = []
    (edits,) = cr.response_filters
    assert edits.on_response(None, 200, response)  # type: ignore[arg-type]
    assert response == [(b"x-p", b"route")]
    assert cr.virtual_host.name == "v" and cr.action is r.action and cr.route is r


@pytest.mark.parametrize(
    ("bad_route", "path_suffix", "reason"),
    [
        (route("r", "(", "regex"), "routes[0].match.path", "invalid regex"),
        (route("r", headers=(hdr("x", "regex", "("),)), "routes[0].match.headers[0].match", "invalid regex"),
        (route("r", headers=(hdr(":status", "present"),)), "routes[0].match.headers[0].name", "pseudo"),
        (route("r", action=ForwardAction()), "routes[0].action", "exactly one"),
        (
            route("r", action=ForwardAction(weighted=(WeightedCluster(name="a", weight=0),))),
            "routes[0].action.weighted",
            "total weight",
        ),
        (
            route("r", action=fwd(regex_rewrite=RegexRewrite(pattern="(a)", substitution="\\2"))),
            "routes[0].action.regex_rewrite.substitution",
            "group",
        ),
        (
            route("r", action=fwd(regex_rewrite=RegexRewrite(pattern="a", substitution="\\n"))),
            "routes[0].action.regex_rewrite.substitution",
            "invalid escape",
        ),
        (
            route(
                "r", action=fwd(prefix_rewrite="/", regex_rewrite=RegexRewrite(pattern="a", substitution="b"))
            ),
            "routes[0].action",
            "mutually exclusive",
        ),
        (
            route("r", action=RedirectAction(path="/a", prefix_rewrite="/b")),
            "routes[0].action",
            "mutually exclusive",
        ),
    ],
)
def test_bad_routes_are_config_errors_with_paths(bad_route: Route, path_suffix: str, reason: str) -> None:
    with pytest.raises(ConfigError) as exc:
        table(bad_route)
    issue = exc.value.issues[0]
    assert issue.path == f"virtual_hosts[0].{path_suffix}"
    assert reason in issue.reason
