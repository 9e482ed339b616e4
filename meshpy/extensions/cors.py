"""Envoy's CORS filter (envoy.filters.http.cors): the proxy answers a browser's preflight and adds the
access-control-* headers to the answers of cross-origin requests, by the CorsPolicy of the route.

The listener's config (envoy.extensions.filters.http.cors.v3.Cors) has no fields; the policy is the
per-route CorsPolicy, on a virtual host or a route (typed_per_filter_config under the filter's name),
or Envoy's deprecated `cors` field of a VirtualHost or RouteAction (translate_routes makes it an
override that every CORS filter of the listener reads, whatever its name). As in Envoy 1.40
(cors_filter.cc):

- The policies of the levels are read together, the route's first: each field is the first level's
  that sets it (a non-empty list or string, a set BoolValue); `filter_enabled` and `shadow_enabled`
  are the route's own (its virtual host's where the route gives none). Configs under the filter's name
  win over the deprecated fields, which are then not read at all (`route_config_levels`).
- Nothing happens on a route without a route action (direct_response, redirect), nor for a request
  without an Origin, nor where the policy is off. The origin is allowed when a matcher of
  `allow_origin_string_match` matches it, or matches "*" (`prefix: "*"` allows every origin).
- A preflight (OPTIONS with Origin and Access-Control-Request-Method) from an allowed origin is
  answered here: 200, no body, allow-origin (the origin itself), allow-credentials, allow-methods,
  allow-headers ("*": the request's own access-control-request-method / -headers echoed), max-age,
  and allow-private-network when asked for and allowed. From another origin it goes upstream
  (`forward_not_matching_preflights`, true by default), or is answered the same way without
  allow-origin. The answer skips the route's response_headers edits: Envoy encodes it itself rather
  than sending a local reply.
- Any answer to a request from an allowed origin (upstream's, or the proxy's own) gets allow-origin,
  allow-credentials and expose-headers, replacing those it has. No `vary` is added.
- `filter_enabled` / `shadow_enabled`: drawn per request, the runtime_key's value in the layered runtime
  over the default_value (meshpy.extensions.runtime_flags), as Envoy's featureEnabled.
- Envoy's counters http.<prefix>.cors.origin_valid / origin_invalid are kept on the filter (`valid`,
  `invalid`); meshpy has no way yet for a built-in filter to export them.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable
from typing import Any

from envoy.extensions.filters.http.cors.v3 import cors_pb2
from google.protobuf import json_format

from meshpy import extensions
from meshpy.extensions.runtime_flags import Fraction, field
from meshpy.extensions.strings import check_matcher
from meshpy.filters import CONTINUE, Headers, HttpFilter, Request, Response, Verdict
from meshpy.model.filter_types import FilterOverride
from meshpy.model.meshpy_yaml_filters import canonical_config
from meshpy.xds.translate_base import Issues, child, enum_name, item

CLASS = "meshpy.extensions.cors:Cors"
_POLICY = "policy"  # the instance's config: the levels' CorsPolicy, merged (see Cors.route_config)
_POLICY_FIELDS = frozenset({
    "allow_origin_string_match", "allow_methods", "allow_headers", "expose_headers", "max_age",
    "allow_credentials", "filter_enabled", "shadow_enabled", "allow_private_network_access",
    "forward_not_matching_preflights"})
_VALUES = ("allow_methods", "allow_headers", "expose_headers", "max_age")  # sent as header values
_OWN_LEVEL = ("filter_enabled", "shadow_enabled")  # Envoy reads these of the most specific level only
_DENOMINATORS = {"HUNDRED": 100, "TEN_THOUSAND": 10_000, "MILLION": 1_000_000}
_ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)

ALLOW_ORIGIN = "access-control-allow-origin"
ALLOW_CREDENTIALS = "access-control-allow-credentials"
ALLOW_METHODS = "access-control-allow-methods"
ALLOW_HEADERS = "access-control-allow-headers"
MAX_AGE = "access-control-max-age"
EXPOSE_HEADERS = "access-control-expose-headers"
ALLOW_PRIVATE_NETWORK = "access-control-allow-private-network"


# -- config ----------------------------------------------------------------------------------------
def check(issues: Issues, msg: Any, path: str) -> None:
    """The listener's Cors: no fields (the policy is per route)."""
    issues.fields(msg, path, ())


def check_route(issues: Issues, msg: Any, path: str) -> bool:
    """A per-route CorsPolicy; it never turns the filter off (a FilterConfig's `disabled` does)."""
    check_policy(issues, msg, path)
    return False


def check_policy(issues: Issues, msg: Any, path: str) -> None:
    issues.fields(msg, path, _POLICY_FIELDS)
    for i, m in enumerate(msg.allow_origin_string_match):
        at = item(child(path, "allow_origin_string_match"), i)
        check_matcher(issues, m, at)
        kind = m.WhichOneof("match_pattern")
        if kind in ("prefix", "suffix", "contains") and not getattr(m, kind):
            issues.add(child(at, kind), "must not be empty")  # (Envoy's min_len: 1)
    for name in _VALUES:
        if any(c in getattr(msg, name) for c in "\r\n\0"):
            # Envoy takes the config and writes the value as it is; meshpy does not send such a header.
            issues.add(child(path, name), "is not a valid header value (CR, LF or NUL)")
    for name in _OWN_LEVEL:
        if msg.HasField(name):
            _check_fraction(issues, getattr(msg, name), child(path, name))


def _check_fraction(issues: Issues, msg: Any, path: str) -> None:
    issues.fields(msg, path, {"default_value", "runtime_key"})
    if not msg.HasField("default_value"):
        issues.add(child(path, "default_value"), "is required")
        return
    value = msg.default_value
    issues.fields(value, child(path, "default_value"), {"numerator", "denominator"})
    if enum_name(value, "denominator") not in _DENOMINATORS:
        issues.add(child(path, "default_value.denominator"), f"unknown {enum_name(value, 'denominator')}")


def legacy_override(issues: Issues, msg: Any, path: str) -> FilterOverride:
    """A VirtualHost's or RouteAction's deprecated `cors` (envoy.config.route.v3.CorsPolicy, the
    same fields as CorsPolicy): the config every CORS filter of the listener reads there, unless a
    typed_per_filter_config names that filter."""
    policy = cors_pb2.CorsPolicy()
    try:
        json_format.ParseDict(extensions.as_json(msg), policy)
    except json_format.ParseError as err:  # a field the filter's own CorsPolicy does not have
        issues.add(path, f"{err}")
    check_policy(issues, policy, path)
    return FilterOverride(name=CLASS, by_class=True, config=canonical_config(extensions.as_json(policy)))


def merged(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Two levels' CorsPolicy (JSON) as one, `over` the more specific: as Envoy reads its list of
    policies, each field from the first level that sets it, the enabling fractions from `over`."""
    out = {k: v for k, v in base.items() if k not in _OWN_LEVEL}
    out.update((k, v) for k, v in over.items() if v not in ("", [], None))
    for name in _OWN_LEVEL:
        if name in over:
            out[name] = over[name]
    return out


# -- the policy, compiled ----------------------------------------------------------------------------
def _wire(value: str) -> str:
    """A config string as the header value Envoy sends (its UTF-8 bytes), in the latin-1 text that
    meshpy's headers hold."""
    return value.encode().decode("latin-1")


def _origin_test(m: Any) -> Callable[[str], bool]:
    """A StringMatcher over the Origin as it came (latin-1 text of its bytes). Envoy compares bytes
    and folds case in ASCII only, hence no str.lower()."""
    kind = m.WhichOneof("match_pattern")
    if kind == "safe_regex":
        full = re.compile(m.safe_regex.regex).fullmatch  # RE2's FullMatch
        return lambda s: full(s) is not None
    want = _wire(getattr(m, kind))
    tests: dict[str, Callable[[str, str], bool]] = {
        "exact": lambda s, w: s == w, "prefix": lambda s, w: s.startswith(w),
        "suffix": lambda s, w: s.endswith(w), "contains": lambda s, w: w in s}
    test = tests[kind]
    if m.ignore_case:
        want = want.translate(_ASCII_LOWER)
        return lambda s: test(s.translate(_ASCII_LOWER), want)
    return lambda s: test(s, want)


class Policy:
    """One route's policy, every level merged, compiled for the request path."""

    __slots__ = ("allow_all", "credentials", "enabled", "expose", "forward", "headers", "max_age",
                 "methods", "origins", "private_network", "shadow")

    def __init__(self, msg: Any) -> None:
        self.origins = tuple(_origin_test(m) for m in msg.allow_origin_string_match)
        # Envoy asks each matcher about "*" too: one that matches it allows every origin.
        self.allow_all = any(t("*") for t in self.origins)
        self.methods = _wire(msg.allow_methods)
        self.headers = _wire(msg.allow_headers)
        self.expose = _wire(msg.expose_headers)
        self.max_age = _wire(msg.max_age)
        self.credentials = msg.allow_credentials.value
        self.private_network = msg.allow_private_network_access.value
        self.forward = msg.forward_not_matching_preflights.value \
            if msg.HasField("forward_not_matching_preflights") else True
        self.enabled = Fraction(field(msg, "filter_enabled"), True)
        self.shadow = Fraction(field(msg, "shadow_enabled"), False)

    def allows(self, origin: str) -> bool:
        return self.allow_all or any(t(origin) for t in self.origins)

    def preflight_headers(self, request: Request, origin: str, allowed: bool) -> dict[str, str]:
        """The answer's headers, in Envoy's order."""
        out: dict[str, str] = {}
        if allowed:
            out[ALLOW_ORIGIN] = origin
        if self.credentials:
            out[ALLOW_CREDENTIALS] = "true"
        if self.methods:
            out[ALLOW_METHODS] = _joined(request, "access-control-request-method") \
                if self.methods == "*" else self.methods
        if self.headers:
            out[ALLOW_HEADERS] = _joined(request, "access-control-request-headers") \
                if self.headers == "*" else self.headers
        if self.max_age:
            out[MAX_AGE] = self.max_age
        if self.private_network and _joined(request, "access-control-request-private-network") == "true":
            out[ALLOW_PRIVATE_NETWORK] = "true"
        return out


def _joined(request: Request, name: str) -> str:
    """A request header's value as Envoy reads it: repeated fields joined by commas."""
    values = request.headers.get_all(name)
    return values[0] if len(values) == 1 else ",".join(values)


# -- the filter --------------------------------------------------------------------------------------
class Cors(HttpFilter):
    """Envoy's CORS filter. Its config is the listener's Cors ({}); where a virtual host or route gives
    a CorsPolicy, route_config merges them under "policy"."""

    route_config_levels = True  # Envoy reads the policies of every level, not the most specific one

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        policy = config.get(_POLICY)
        extensions.parsed(EXTENSION, {k: v for k, v in config.items() if k != _POLICY})
        if policy is not None and not isinstance(policy, dict):
            raise ValueError(f"{_POLICY}: must be a mapping (a CorsPolicy)")
        self.policy = None if policy is None else Policy(extensions.parsed(EXTENSION, policy, route=True))
        self.valid = 0  # Envoy's cors.origin_valid
        self.invalid = 0  # and cors.origin_invalid
        self._key = f"{CLASS}#{id(self)}"  # request.state: the allowed origin ("" none), per instance

    @classmethod
    def route_config(cls, listener: dict[str, Any], route: dict[str, Any]) -> dict[str, Any]:
        base = listener.get(_POLICY)
        own = {k: v for k, v in listener.items() if k != _POLICY}
        return {**own, _POLICY: route if base is None else merged(base, route)}

    def on_request(self, request: Request) -> Verdict:
        p = self.policy
        if p is None or not request.forwards:
            return CONTINUE
        # Envoy draws each fraction again at each test: the same calls in the same order.
        if not p.enabled.on(request) and not p.shadow.on(request):
            return CONTINUE
        origin = _joined(request, "origin")
        if not origin:
            return CONTINUE
        allowed = p.allows(origin)
        if allowed:
            self.valid += 1
        else:
            self.invalid += 1
        if p.shadow.on(request) and not p.enabled.on(request):
            return CONTINUE  # counted, not enforced
        request.state[self._key] = origin if allowed else ""
        if request.method != "OPTIONS" or not _joined(request, "access-control-request-method"):
            return CONTINUE
        if not allowed and p.forward:
            return CONTINUE
        return request.reply(200, b"", p.preflight_headers(request, origin, allowed), local_reply=False)

    def on_response(self, request: Request, response: Response) -> None:
        origin = request.state.get(self._key)
        if not origin:
            return
        p = self.policy
        assert p is not None
        h = response.headers
        _put(h, ALLOW_ORIGIN, origin)
        if p.credentials:
            _put(h, ALLOW_CREDENTIALS, "true")
        if p.expose:
            _put(h, EXPOSE_HEADERS, p.expose)


def _put(headers: Headers, name: str, value: str) -> None:
    """Envoy's setInline: the one field `name` has `value` (kept in place when it has it already, as
    on the preflight answer, so that the order is Envoy's)."""
    if headers.get_all(name) != [value]:
        headers.set(name, value)


EXTENSION = extensions.Extension(
    message=cors_pb2.Cors, cls=CLASS, check=check, route_message=cors_pb2.CorsPolicy, route_check=check_route)
