"""Errors in routes and virtual hosts of the meshpy YAML, each with its exact path and reason."""

from __future__ import annotations

import pytest
from yamlkit import CLUSTERS, issues, route_yaml


@pytest.mark.parametrize(
    ("route", "expected"),
    [
        (
            "{cluster: v1, redirect: {scheme: https}}",
            "listeners[0].routes[0]: has cluster and redirect; a route has exactly one action",
        ),
        ("{match: /x}", "listeners[0].routes[0]: needs one of cluster, split, redirect or direct"),
        (
            "{prefix: /x, cluster: v1}",
            "listeners[0].routes[0].prefix: belongs under match: (e.g. match: {prefix: /api})",
        ),
        (
            "{match: api, cluster: v1}",
            "listeners[0].routes[0].match: 'api' must start with / (a string match is a path prefix)",
        ),
        (
            "{match: {prefix: /a, path: /b}, cluster: v1}",
            "listeners[0].routes[0].match: "
            "has prefix and path; a match has at most one of prefix, path, regex",
        ),
        (
            "{match: {regex: '(('}, cluster: v1}",
            "listeners[0].routes[0].match.regex: invalid regex '((': "
            "missing ), unterminated subpattern at position 1",
        ),
        (
            "{match: {path: '/a?b=1'}, cluster: v1}",
            "listeners[0].routes[0].match.path: "
            "path matches ignore the query string; match query parameters with query:",
        ),
        (
            "{match: {regex: /a, case_sensitive: false}, cluster: v1}",
            "listeners[0].routes[0].match.case_sensitive: does not apply to regex; use (?i) in the pattern",
        ),
        (
            "{match: {headers: {x-a: {regex: '[', }}}, cluster: v1}",
            "listeners[0].routes[0].match.headers.x-a.regex: invalid regex '[': "
            "unterminated character set at position 0",
        ),
        (
            "{match: {headers: {x-a: {prefix: a, suffix: b}}}, cluster: v1}",
            "listeners[0].routes[0].match.headers.x-a: "
            "needs exactly one of exact, prefix, suffix, contains, regex, present",
        ),
        (
            "{match: {headers: {x-a: {prefix: ''}}}, cluster: v1}",
            "listeners[0].routes[0].match.headers.x-a.prefix: must not be empty",
        ),
        (
            "{match: {headers: {x-a: {regex: a, ignore_case: true}}}, cluster: v1}",
            "listeners[0].routes[0].match.headers.x-a.ignore_case: does not apply to regex (use (?i))",
        ),
        (
            "{match: {headers: {x-a: on}}, cluster: v1}",
            "listeners[0].routes[0].match.headers.x-a: expected a string, got a boolean "
            "(quote it: YAML reads yes/no/on/off as booleans); "
            "or give a mapping like {prefix: ...} or {present: true}",
        ),
        (
            "{match: {headers: [{exact: a}]}, cluster: v1}",
            "listeners[0].routes[0].match.headers[0]: expected a mapping with a name",
        ),
        (
            "{match: {headers: {'bad name': a}}, cluster: v1}",
            "listeners[0].routes[0].match.headers.bad name: 'bad name' is not a valid header name",
        ),
        (
            "{match: {query: {q: {exact: a, invert: true}}}, cluster: v1}",
            "listeners[0].routes[0].match.query.q.invert: query matches cannot be inverted",
        ),
        (
            "{match: {query: {q: {present: false}}}, cluster: v1}",
            "listeners[0].routes[0].match.query.q.present: query matches cannot require absence",
        ),
        (
            "{match: {methods: ['GE T']}, cluster: v1}",
            "listeners[0].routes[0].match.methods[0]: 'GE T' is not an HTTP method",
        ),
        ("{split: {v1: 0, v2: 1.5}}", "listeners[0].routes[0].split.v1: must be a positive integer, got 0"),
        ("{split: {v1: 0, v2: 1.5}}", "listeners[0].routes[0].split.v2: expected an integer, got a number"),
        ("{split: {}}", "listeners[0].routes[0].split: must name at least one cluster with its weight"),
        (
            "{redirect: {code: 305, scheme: https}}",
            "listeners[0].routes[0].redirect.code: redirect code 305 is not one of 301, 302, 303, 307, 308",
        ),
        ("{redirect: {path: a}}", "listeners[0].routes[0].redirect.path: 'a' must start with /"),
        (
            "{redirect: {path: /a, prefix_rewrite: /b}}",
            "listeners[0].routes[0].redirect: has both path and prefix_rewrite; use only one",
        ),
        (
            "{redirect: {code: 302}}",
            "listeners[0].routes[0].redirect: "
            "needs at least one of scheme, host, port, path, prefix_rewrite, strip_query",
        ),
        ("{redirect: {port: 0, host: a}}", "listeners[0].routes[0].redirect.port: port 0 is out of range"),
        (
            "{redirect: {scheme: 'ht tp'}}",
            "listeners[0].routes[0].redirect.scheme: 'ht tp' is not a URL scheme",
        ),
        ("{direct: 99}", "listeners[0].routes[0].direct: status 99 is out of range (200-599)"),
        (
            "{direct: {status: 600}}",
            "listeners[0].routes[0].direct.status: status 600 is out of range (200-599)",
        ),
        ("{direct: {body: x}}", "listeners[0].routes[0].direct: missing required key 'status'"),
        (
            "{direct: 200, timeout: 1s}",
            "listeners[0].routes[0].timeout: only applies to routes with cluster or split",
        ),
        (
            "{cluster: v1, prefix_rewrite: /, regex_rewrite: {pattern: a, substitution: b}}",
            "listeners[0].routes[0]: has both prefix_rewrite and regex_rewrite; use only one",
        ),
        (
            "{match: {regex: /a}, cluster: v1, prefix_rewrite: /}",
            "listeners[0].routes[0].prefix_rewrite: needs a prefix or path match; "
            "use regex_rewrite with a regex match",
        ),
        (
            r"{cluster: v1, regex_rewrite: {pattern: 'a(b)', substitution: '\2'}}",
            "listeners[0].routes[0].regex_rewrite.substitution: refers to group \\2 but the pattern has 1",
        ),
        (
            "{cluster: v1, regex_rewrite: {pattern: a}}",
            "listeners[0].routes[0].regex_rewrite: missing required key 'substitution'",
        ),
        ("{cluster: v1, timeout: -2s}", "listeners[0].routes[0].timeout: duration -2s must not be negative"),
        (
            "{cluster: v1, request_headers: {set: {host: a}}}",
            "listeners[0].routes[0].request_headers.set.host: "
            "'host' cannot be edited (use host_rewrite on a route to change the host)",
        ),
        (
            "{cluster: v1, request_headers: {remove: [':path']}}",
            "listeners[0].routes[0].request_headers.remove[0]: pseudo-header ':path' cannot be edited",
        ),
        (
            "{cluster: v1, response_headers: {set: {x-a: yes}}}",
            "listeners[0].routes[0].response_headers.set.x-a: "
            "expected a string, got a boolean (quote it: YAML reads yes/no/on/off as booleans)",
        ),
        (
            '{cluster: v1, response_headers: {set: {x-a: "a\\nb"}}}',
            "listeners[0].routes[0].response_headers.set.x-a: header values must not contain CR, LF or NUL",
        ),
        (
            "{cluster: v1, response_headers: {append: {x-a: b}}}",
            "listeners[0].routes[0].response_headers.append: unknown key",
        ),
        (
            "{cluster: v1, headers: {x-a: b}}",
            "listeners[0].routes[0].headers: "
            "to match headers put them under match:, to edit them use request_headers/response_headers",
        ),
        ("{cluster: nope}", "listeners[0].routes[0].cluster: unknown cluster 'nope'"),
        (
            "{cluster: backnd}",
            "listeners[0].routes[0].cluster: unknown cluster 'backnd' (did you mean 'backend'?)",
        ),
        ("{split: {v1: 1, nope: 1}}", "listeners[0].routes[0].split.nope: unknown cluster 'nope'"),
    ],
)
def test_route_errors(route: str, expected: str) -> None:
    assert expected in issues(route_yaml(route))


@pytest.mark.parametrize(
    ("vhosts", "expected"),
    [
        (
            "[{domains: [], cluster: v1}]",
            "listeners[0].virtual_hosts[0].domains: must not be empty (use ['*'] to match every host)",
        ),
        (
            "[{domains: ['api.*.com'], cluster: v1}]",
            "listeners[0].virtual_hosts[0].domains[0]: 'api.*.com': "
            "a wildcard is only allowed alone, at the start or at the end",
        ),
        (
            "[{domains: ['*api*'], cluster: v1}]",
            "listeners[0].virtual_hosts[0].domains[0]: '*api*': "
            "a wildcard is only allowed alone, at the start or at the end",
        ),
        (
            "[{domains: ['a/b'], cluster: v1}]",
            "listeners[0].virtual_hosts[0].domains[0]: 'a/b' is not a valid domain",
        ),
        ("[{domains: [a]}]", "listeners[0].virtual_hosts[0]: needs one of routes or cluster"),
        (
            "[{domains: [a], cluster: v1, routes: []}]",
            "listeners[0].virtual_hosts[0]: has both routes and cluster",
        ),
        ("[{domains: [a], routes: []}]", "listeners[0].virtual_hosts[0].routes: must not be empty"),
        ("[]", "listeners[0].virtual_hosts: must not be empty"),
        (
            "[{domains: [a, b], cluster: v1}, {domains: [B], cluster: v1}]",
            "listeners[0].virtual_hosts[1].domains[0]: domain 'b' is also in listeners[0].virtual_hosts[0]",
        ),
        (
            "[{name: x, domains: [a], cluster: v1}, {name: x, domains: [b], cluster: v1}]",
            "listeners[0].virtual_hosts[1].name: "
            "duplicate virtual host name 'x' (also listeners[0].virtual_hosts[0])",
        ),
        (
            "[{domains: [a], cluster: v1}, {domains: [b], routes: [{match: /x, cluster: nope}]}]",
            "listeners[0].virtual_hosts[1].routes[0].cluster: unknown cluster 'nope'",
        ),
        (
            "[{domains: [a], cluster: v1}, {domains: [b], cluster: nope}]",
            "listeners[0].virtual_hosts[1].cluster: unknown cluster 'nope'",
        ),
    ],
)
def test_virtual_host_errors(vhosts: str, expected: str) -> None:
    assert expected in issues(f"listeners: [{{address: ':1', virtual_hosts: {vhosts}}}]\n" + CLUSTERS)


def test_route_idle_timeout_off_means_none_for_the_route() -> None:
    from meshpy.model.load import load_text

    text = (
        "listeners:\n  - address: 127.0.0.1:10000\n    routes:\n"
        "      - {cluster: v1, idle_timeout: off}\n      - {cluster: v1, idle_timeout: 3s}\n"
        "clusters: {v1: 127.0.0.1:9001}\n"
    )
    http = load_text(text).listeners[0].http
    assert http is not None
    routes = http.route_config.virtual_hosts[0].routes
    assert [r.action.idle_timeout for r in routes] == [0.0, 3.0]  # type: ignore[union-attr]
