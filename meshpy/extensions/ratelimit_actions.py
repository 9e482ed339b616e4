"""The descriptors of Envoy's global rate limit: each entry of a `rate_limits` list (a route's, a
virtual host's, the filter's or a RateLimitPerRoute's; envoy.config.route.v3.RateLimit) makes at most
one descriptor of a request, its actions adding an entry each, in order.

As Envoy 1.40 makes them (router_ratelimit.cc, ratelimit_config.cc; checked against the binary):
- An action that cannot make its entry drops the whole descriptor; with `skip_if_absent` it adds
  nothing and the next action goes on. An action may add nothing and go on (an empty header value).
- source_cluster: the proxy's service cluster (the bootstrap's node.cluster, or --service-cluster).
- destination_cluster: the route's cluster. A route of weighted_clusters picks its cluster after the
  filters in meshpy (before them in Envoy): there the action is refused where the route is known when
  the config is read, and makes no descriptor where it is not (the filter's own `rate_limits`).
- request_headers: the header's first value (`:authority`, `:method`, `:path`, `:scheme` and `host`
  as Envoy names them; x-forwarded-proto as the connection manager sets it before any filter).
- remote_address and masked_remote_address: the downstream address Envoy's connection manager trusts
  (x-forwarded-for under use_remote_address and xff_num_trusted_hops), an IP address only; masked as
  a CIDR (/32 and /128 unless said). remote_address_match: its value where that address is in the
  ranges.
- generic_key, header_value_match, query_parameter_value_match: their descriptor_value as written
  (Envoy 1.40 reads it as a format string only under the runtime flag
  enable_formatter_for_ratelimit_action_descriptor_value, off by default; meshpy refuses turning it
  on). The matches: Envoy's header matchers; query parameters percent-decoded, the first of a name.
- query_parameters: the parameter's first value, percent-decoded (`+` stays).
- metadata: ROUTE_ENTRY reads the route's filter_metadata (a string value only). DYNAMIC reads the
  request's dynamic metadata, which meshpy keeps none of (no filter of meshpy's sets any): as in an
  Envoy whose chain sets none, the default_value, else skip_if_absent, decides. The cluster and
  locality metadata sources (CLUSTER_ENTRY, CLUSTER_LOCALITY_ENTRY) are refused: meshpy keeps no
  metadata of clusters. dynamic_metadata, deprecated, is refused by Envoy 1.40 itself.
- extension: Envoy's HTTP matching inputs of a request header or a query parameter; the entry's key
  is the extension's name, and an absent value drops the descriptor.
- limit: a fixed `rate_limit` goes with the descriptor; `dynamic_metadata` never resolves (nothing
  to read it from), so no override is sent, as Envoy sends none when it does not resolve.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote

from envoy.config.route.v3 import route_components_pb2
from envoy.type.matcher.v3 import http_inputs_pb2  # (the extension action's inputs: also for @type)

from meshpy.extensions import ratelimit_config as config
from meshpy.filters import Request
from meshpy.model.routes import ForwardAction
from meshpy.routing.matchers import HeaderMatcher, RequestView, compile_string_match, split_path
from meshpy.stack.authz import remote_address
from meshpy.xds.translate_base import Issues, item
from meshpy.xds.translate_matchers import header_match, string_match

RateLimitEntry = route_components_pb2.RateLimit
Entry = tuple[str, str]
# An action's outcome: an entry, NOTHING (no entry, the next action goes on) or None (no descriptor).
NOTHING: Entry = ("", "")
Action = Callable[["Facts"], Entry | None]

_PSEUDO = {":authority", ":method", ":path", ":scheme", "host"}


class Facts:
    """What the actions read of one request, each worked out when first asked."""

    __slots__ = ("_query", "_remote", "_remote_known", "_view", "request", "service_cluster")

    def __init__(self, request: Request, service_cluster: str) -> None:
        self.request = request
        self.service_cluster = service_cluster
        self._view: RequestView | None = None
        self._query: dict[str, str] | None = None
        self._remote: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None
        self._remote_known = False

    def header(self, name: str) -> str | None:
        """The first value of a request header, as Envoy's filters see the request."""
        if name in _PSEUDO:
            req = self.request
            return {":authority": req.authority, "host": req.authority, ":method": req.method,
                    ":path": req.path, ":scheme": req._ex.cfg.scheme.decode()}[name]
        value = self.request.headers.get(name)
        if value is None and name == "x-forwarded-proto" and self.request._ex.cfg.forwarded_proto:
            return self.request._ex.cfg.scheme.decode()
        return value

    def view(self) -> RequestView:
        if self._view is None:
            req = self.request
            self._view = RequestView(req.authority, req.path, req.method, req._ex.headers)
        return self._view

    def query(self) -> dict[str, str]:
        """The query's parameters, percent-decoded, the first value of each name."""
        if self._query is None:
            params: dict[str, str] = {}
            query = split_path(self.request.path)[1]
            for part in query.split("&") if query else ():
                name, _, value = part.partition("=")
                params.setdefault(unquote(name), unquote(value))
            self._query = params
        return self._query

    def remote(self) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
        if not self._remote_known:
            self._remote_known = True
            ex = self.request._ex
            address = remote_address(ex.down.peer, ex.headers, ex.cfg.use_remote_address,
                                     ex.cfg.options.xff_num_trusted_hops)
            try:
                self._remote = ipaddress.ip_address(address)
            except ValueError:
                self._remote = None  # a Unix socket's peer: not an IP address, as Envoy's check
        return self._remote

    def route_metadata(self, namespace: str) -> Any:
        route = self.request._ex.route
        for name, text in route.route.metadata if route is not None else ():
            if name == namespace:
                return json.loads(text)
        return None


class Policy:
    """One entry, compiled: its actions, and what goes with its descriptor."""

    __slots__ = ("actions", "disable_key", "headers_off", "hits_addend", "limit", "on_done", "stage")

    def __init__(self, msg: Any, per_filter: bool) -> None:
        self.stage = msg.stage.value
        self.disable_key = msg.disable_key
        self.on_done = msg.apply_on_stream_done
        # (Envoy 1.40 reads it of the filter's and RateLimitPerRoute's entries, not of a route's)
        self.hits_addend = msg.hits_addend.number.value if per_filter and msg.hits_addend.HasField("number") \
            else None
        # Its status is left out of the x-ratelimit-* headers (the descriptor's x_ratelimit_option OFF).
        self.headers_off = msg.x_ratelimit_option == RateLimitEntry.OFF
        self.limit = (msg.limit.rate_limit.requests_per_unit, msg.limit.rate_limit.unit) \
            if msg.limit.HasField("rate_limit") else None
        self.actions = tuple(_action(a) for a in msg.actions)

    def descriptor(self, facts: Facts) -> list[Entry] | None:
        entries = []
        for action in self.actions:
            entry = action(facts)
            if entry is None:
                return None
            if entry[0]:
                entries.append(entry)
        return entries


def compile_entries(entries: list[dict[str, Any]], per_filter: bool = False) -> tuple[Policy, ...]:
    """Entries given as JSON (proto field names), checked again: ValueError naming each problem."""
    out = []
    issues = Issues()
    for i, given in enumerate(entries):
        msg = RateLimitEntry()
        json_format_parse(given, msg)
        config.check_entry(issues, msg, item("rate_limits", i), per_filter)
        out.append(Policy(msg, per_filter))
    if issues.items:
        raise ValueError("; ".join(f"{i.path}: {i.reason}" for i in issues.items))
    return tuple(out)


def json_format_parse(given: dict[str, Any], msg: Any) -> None:
    from google.protobuf import json_format  # type: ignore[import-untyped, unused-ignore]

    try:
        json_format.ParseDict(given, msg)
    except json_format.ParseError as err:
        raise ValueError(str(err)) from err


# -- the actions, compiled ---------------------------------------------------------------------------
def _action(msg: Any) -> Action:
    kind = msg.WhichOneof("action_specifier")
    body = getattr(msg, kind)
    if kind == "source_cluster":
        return lambda f: ("source_cluster", f.service_cluster)
    if kind == "destination_cluster":
        return _destination
    if kind == "request_headers":
        return _header(body.header_name.lower(), body.descriptor_key, body.skip_if_absent)
    if kind == "query_parameters":
        return _query(body.query_parameter_name, body.descriptor_key or "query_param", body.skip_if_absent)
    if kind == "remote_address":
        return _remote
    if kind == "masked_remote_address":
        v4 = body.v4_prefix_mask_len.value if body.HasField("v4_prefix_mask_len") else 32
        v6 = body.v6_prefix_mask_len.value if body.HasField("v6_prefix_mask_len") else 128
        return _masked(v4, v6)
    if kind == "generic_key":
        entry = (body.descriptor_key or "generic_key", body.descriptor_value)
        return lambda f: entry
    if kind == "header_value_match":
        matchers = tuple(HeaderMatcher(header_match(Issues(), h, ""), "") for h in body.headers)
        return _matched((body.descriptor_key or "header_match", body.descriptor_value),
                        wrapped_true(body, "expect_match"),
                        lambda f: all(m.matches(f.view()) for m in matchers))
    if kind == "query_parameter_value_match":
        tests = tuple((q.name, compile_string_match(string_match(Issues(), q.string_match, ""), "")
                       if q.HasField("string_match") else None) for q in body.query_parameters)
        return _matched((body.descriptor_key or "query_match", body.descriptor_value),
                        wrapped_true(body, "expect_match"), lambda f: _query_matches(f, tests))
    if kind == "metadata":
        return _metadata(body)
    if kind == "remote_address_match":
        nets = tuple(ipaddress.ip_network(f"{r.address_prefix}/{r.prefix_len.value}", strict=False)
                     for r in body.address_matcher.ranges)
        return _address_in((body.descriptor_key or "remote_address_match", body.descriptor_value), nets)
    # extension: an HTTP matching input
    key = body.name
    if body.typed_config.TypeName() == http_inputs_pb2.HttpRequestHeaderMatchInput.DESCRIPTOR.full_name:
        header = http_inputs_pb2.HttpRequestHeaderMatchInput()
        body.typed_config.Unpack(header)
        name = header.header_name.lower()
        return lambda f: _input(key, f.header(name))
    param = http_inputs_pb2.HttpRequestQueryParamMatchInput()
    body.typed_config.Unpack(param)
    return lambda f: _input(key, f.query().get(param.query_param))


def wrapped_true(msg: Any, name: str) -> bool:
    return bool(getattr(msg, name).value) if msg.HasField(name) else True


def _destination(f: Facts) -> Entry | None:
    route = f.request._ex.route
    action = route.route.action if route is not None else None
    if isinstance(action, ForwardAction) and action.cluster is not None:
        return "destination_cluster", action.cluster
    return None  # weighted_clusters: picked after the filters (see the module's docstring)


def _header(name: str, key: str, skip: bool) -> Action:
    def action(f: Facts) -> Entry | None:
        value = f.header(name)
        if value is None:
            return NOTHING if skip else None
        return key, value
    return action


def _query(name: str, key: str, skip: bool) -> Action:
    def action(f: Facts) -> Entry | None:
        value = f.query().get(name)
        if value is None:
            return NOTHING if skip else None
        return key, value
    return action


def _remote(f: Facts) -> Entry | None:
    address = f.remote()
    return ("remote_address", str(address)) if address is not None else None


def _masked(v4: int, v6: int) -> Action:
    def action(f: Facts) -> Entry | None:
        address = f.remote()
        if address is None:
            return None
        length = v4 if address.version == 4 else v6
        return "masked_remote_address", str(ipaddress.ip_network(f"{address}/{length}", strict=False))
    return action


def _address_in(entry: Entry, nets: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]) -> Action:
    def action(f: Facts) -> Entry | None:
        address = f.remote()
        return entry if address is not None and any(address in n for n in nets) else None
    return action


def _matched(entry: Entry, expect: bool, test: Callable[[Facts], bool]) -> Action:
    return lambda f: entry if test(f) == expect else None


def _query_matches(f: Facts, tests: tuple[tuple[str, Callable[[str], bool] | None], ...]) -> bool:
    params = f.query()
    for name, test in tests:
        value = params.get(name)
        if value is None or (test is not None and not test(value)):
            return False
    return True


def _metadata(msg: Any) -> Action:
    key, default, skip = msg.descriptor_key, msg.default_value, msg.skip_if_absent
    namespace, path = msg.metadata_key.key, [s.key for s in msg.metadata_key.path]
    dynamic = msg.source == msg.DYNAMIC

    def action(f: Facts) -> Entry | None:
        value = None if dynamic else f.route_metadata(namespace)
        for segment in path:
            value = value.get(segment) if isinstance(value, dict) else None
        if isinstance(value, str) and value:
            return key, value
        if default:
            return key, default
        return NOTHING if skip else None
    return action


def _input(key: str, value: str | None) -> Entry | None:
    if value is None:
        return None
    return (key, value) if value else NOTHING
