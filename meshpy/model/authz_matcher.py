"""Authorization by Envoy's unified matcher (xds.type.matcher.v3.Matcher), the RBAC HTTP filter's
`matcher` and `shadow_matcher`: a tree whose leaves are RBAC actions (envoy.config.rbac.v3.Action:
a name and ALLOW, DENY or LOG). Translated by meshpy.xds.translate_authz_matcher, evaluated by
meshpy.stack.authz_matcher.

A request walks the tree: a matcher list tries its field matchers in order and takes the first whose
predicate holds and whose on_match gives a result (an action, or a nested matcher that finds one); a
matcher tree looks its input's value up in an exact or a prefix map (longest prefix first); either
falls back to its on_no_match. The action found decides: ALLOW and LOG allow, DENY denies; no action
at all denies. Its name is the "policy" a denial names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from meshpy.model.authz import Action
from meshpy.model.routes import StringMatch

# What an input reads (Envoy's inputs the RBAC HTTP filter accepts, rbac_filter.cc):
# - request_header: the header's lines joined by ","; `:path`, `:method`, `:authority`, `:scheme` too;
# - destination_ip / destination_port: where the client connected (its original destination in a
#   sidecar); source_ip / source_port: the client as x-forwarded-for and the listener's trust in it
#   say (port 0 for an address that x-forwarded-for gave); direct_source_ip: the connection's peer;
# - server_name: the SNI; uri_san / dns_san / subject: the client certificate's (SANs joined by ",").
# An input with nothing to read (no such header, no TLS, no SNI) matches no value.
InputKind = Literal["request_header", "destination_ip", "destination_port", "source_ip", "source_port",
                    "direct_source_ip", "server_name", "uri_san", "dns_san", "subject"]


@dataclass(frozen=True, slots=True, kw_only=True)
class MatchInput:
    kind: InputKind
    header: str = ""  # (request_header) the name, lower case


@dataclass(frozen=True, slots=True, kw_only=True)
class SinglePredicate:
    """The input's value against a string match, or (envoy.matching.input_matchers.ip) CIDR ranges."""

    input: MatchInput
    match: StringMatch | None = None
    cidrs: tuple[str, ...] = ()  # canonical network text, when `match` is None


@dataclass(frozen=True, slots=True, kw_only=True)
class PredicateList:
    all: bool  # and_matcher (True) or or_matcher
    predicates: tuple[Predicate, ...]  # two or more


@dataclass(frozen=True, slots=True, kw_only=True)
class NotPredicate:
    predicate: Predicate


Predicate = SinglePredicate | PredicateList | NotPredicate


@dataclass(frozen=True, slots=True, kw_only=True)
class RbacAction:
    name: str
    action: Action


@dataclass(frozen=True, slots=True, kw_only=True)
class OnMatch:
    """One of an action and a nested matcher."""

    action: RbacAction | None = None
    matcher: RbacMatcher | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class FieldMatcher:
    predicate: Predicate
    on_match: OnMatch


@dataclass(frozen=True, slots=True, kw_only=True)
class MatcherTree:
    input: MatchInput
    prefix: bool  # prefix_match_map (longest first), else exact_match_map
    entries: tuple[tuple[str, OnMatch], ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class RbacMatcher:
    """A matcher list (`matchers`) or a matcher tree (`tree`), and what holds when neither finds one."""

    matchers: tuple[FieldMatcher, ...] = ()
    tree: MatcherTree | None = None
    on_no_match: OnMatch | None = None
