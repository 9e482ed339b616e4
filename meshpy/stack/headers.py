"""Header edits compiled once per route, and hop-by-hop header stripping.

Envoy's semantics, from `HeaderParser::evaluateHeaders` (source/common/router/header_parser.cc) and
`RouteEntryImplBase::finalizeRequestHeaders` (config_impl.cc):

- Levels are evaluated one after another, in the order given. The route table passes route, virtual
  host, route config: Envoy's default order (`most_specific_header_mutations_wins: false`). Because a
  later level is applied later, an `overwrite` at the route-config level wins over one at the route
  level, exactly as in Envoy ("later evaluated header parser wins").
- Within one level: first every `remove`, then the conditions (`add_if_absent`, `overwrite_if_exists`)
  are decided against the headers as they are after the removals, then all overwrites are applied
  (remove every line of that name, add one line at the end), then all additions (appended at the end).
- A header added with an empty value is skipped (Envoy's default; `keep_empty_value` is not modelled).

Header names are lower-case bytes; config values are UTF-8 encoded, like Envoy writes them.
"""

from __future__ import annotations

from typing import Final, final

from meshpy.errors import ConfigError
from meshpy.model.routes import HeaderEdits

Header = tuple[bytes, bytes]


@final
class _Level:
    """The edits of one level (route, virtual host or route config), ready to apply."""

    __slots__ = ("adds", "adds_if_absent", "overwrites", "plain_adds", "plain_overwrites", "remove")

    def __init__(self, edits: HeaderEdits, where: str) -> None:
        self.remove: frozenset[bytes] = frozenset(
            _name(n, f"{where}.remove[{i}]", removal=True) for i, n in enumerate(edits.remove)
        )
        adds: list[tuple[bytes, bytes, bool]] = []  # (name, value, only_if_absent)
        overwrites: list[tuple[bytes, bytes, bool]] = []  # (name, value, only_if_exists)
        for i, hv in enumerate(edits.add):
            name = _name(hv.name, f"{where}.add[{i}].name", removal=False)
            if not hv.value:
                continue  # Envoy does not add empty values unless keep_empty_value is set
            value = hv.value.encode("utf-8")
            if hv.append == "append":
                adds.append((name, value, False))
            elif hv.append == "add_if_absent":
                adds.append((name, value, True))
            elif hv.append == "overwrite":
                overwrites.append((name, value, False))
            elif hv.append == "overwrite_if_exists":
                overwrites.append((name, value, True))
            else:
                raise ConfigError.at(f"{where}.add[{i}].append", f"unknown append action {hv.append!r}")
        self.adds = tuple(adds)
        self.overwrites = tuple(overwrites)
        # When nothing in this level depends on the current headers, the work is fixed and can be
        # precomputed: additions are one `extend`, overwrites one filter pass plus one `extend`.
        self.adds_if_absent = any(only for _, _, only in adds)
        self.plain_adds: tuple[Header, ...] | None = (
            None if self.adds_if_absent else tuple((n, v) for n, v, _ in adds)
        )
        conditional_overwrite = any(only for _, _, only in overwrites)
        self.plain_overwrites: tuple[Header, ...] | None = (
            None if conditional_overwrite else _last_wins([(n, v) for n, v, _ in overwrites])
        )

    def __bool__(self) -> bool:
        return bool(self.remove or self.adds or self.overwrites)

    def apply(self, headers: list[Header]) -> None:
        remove = self.remove
        if remove:
            headers[:] = [h for h in headers if h[0] not in remove]
        plain_overwrites = self.plain_overwrites
        plain_adds = self.plain_adds
        if plain_overwrites is None or plain_adds is None:
            # Conditions are decided against the headers before this level adds anything (Envoy
            # collects its decisions first, then writes).
            present = {h[0] for h in headers}
            if plain_overwrites is None:
                plain_overwrites = _last_wins(
                    [(n, v) for n, v, only in self.overwrites if not only or n in present]
                )
            if plain_adds is None:
                plain_adds = tuple((n, v) for n, v, only in self.adds if not only or n not in present)
        if plain_overwrites:
            names = {n for n, _ in plain_overwrites}
            headers[:] = [h for h in headers if h[0] not in names]
            headers.extend(plain_overwrites)
        if plain_adds:
            headers.extend(plain_adds)


def _last_wins(overwrites: list[Header]) -> tuple[Header, ...]:
    """Envoy applies each overwrite as `set` (remove all, add at the end) in order, so for a name set
    twice only the last value survives, placed where that last `set` put it."""
    seen: set[bytes] = set()
    kept: list[Header] = []
    for item in reversed(overwrites):
        if item[0] not in seen:
            seen.add(item[0])
            kept.append(item)
    kept.reverse()
    return tuple(kept)


def _name(name: str, where: str, *, removal: bool) -> bytes:
    lowered = name.lower()
    if not lowered:
        raise ConfigError.at(where, "header name must not be empty")
    # Envoy rejects edits of pseudo-headers (route actions own :path/:authority), and removing Host.
    if lowered.startswith(":") or (removal and lowered == "host"):
        raise ConfigError.at(where, f"{name!r} may not be {'removed' if removal else 'modified'}")
    return lowered.encode("latin-1")


@final
class HeaderOps:
    """All header edits for one route and direction, merged from its levels. Falsy when empty, so the
    hot path can skip it with `if ops: ops.apply(headers)`."""

    __slots__ = ("_levels",)

    def __init__(self, levels: tuple[_Level, ...] = ()) -> None:
        self._levels = levels

    def __bool__(self) -> bool:
        return bool(self._levels)

    def __repr__(self) -> str:
        return f"HeaderOps(levels={len(self._levels)})"

    def apply(self, headers: list[Header]) -> None:
        """Edit `headers` in place."""
        for level in self._levels:
            level.apply(headers)


def compile_edits(*levels: HeaderEdits) -> HeaderOps:
    """Compile header edits given most specific first (route, virtual host, route config); they are
    applied in that order, as Envoy does by default."""
    compiled = []
    for i, edits in enumerate(levels):
        if edits:
            level = _Level(edits, f"levels[{i}]")
            if level:
                compiled.append(level)
    return HeaderOps(tuple(compiled))


# Hop-by-hop headers a proxy must not forward (RFC 9110 section 7.6.1, plus the non-standard
# proxy-connection that Envoy also drops). `trailer` (which names trailer fields) and the
# proxy-authentication headers are end-to-end, and Envoy forwards them, so they stay.
# `http2-settings` goes with an `Upgrade: h2c` offer and means nothing to the next hop.
HOP_BY_HOP: Final = frozenset(
    {
        b"connection", b"keep-alive", b"proxy-connection", b"te", b"transfer-encoding", b"upgrade",
        b"http2-settings",
    }
)
_TE_TRAILERS: Final = (b"te", b"trailers")
# Never removed because a Connection header names them (RFC 9110 7.6.1 lets a sender nominate any
# field): the framing, the Host and the proxy's own forwarding headers. Dropping Content-Length while
# forwarding the body makes the next hop read that body as another request; dropping Host or
# X-Forwarded-For lets a client hide where a request goes or comes from.
NEVER_NOMINATED: Final = frozenset(
    {
        b"content-length", b"transfer-encoding", b"host", b"x-forwarded-for", b"x-forwarded-proto",
        b"x-forwarded-host", b"x-forwarded-port", b"x-request-id",
    }
)


def strip_hop_by_hop(headers: list[Header]) -> list[Header]:
    """A copy of `headers` without hop-by-hop headers, nor the headers a Connection header names.

    `te` is kept as `te: trailers` when it offered trailers (as recent Envoy does; gRPC needs it), and
    dropped otherwise. Upgrade handling (WebSocket) is the caller's business: this strips `upgrade`.
    """
    kept = [h for h in headers if h[0] not in HOP_BY_HOP]
    if len(kept) == len(headers):
        return kept  # nothing hop-by-hop, so no Connection header to read either
    nominated: set[bytes] = set()
    te_trailers = False
    for name, value in headers:
        if name == b"connection":
            for token in value.split(b","):
                token = token.strip().lower()
                if token and token not in HOP_BY_HOP:
                    nominated.add(token)
        elif name == b"te" and not te_trailers:
            te_trailers = any(t.split(b";")[0].strip().lower() == b"trailers" for t in value.split(b","))
    # `close` and `keep-alive` are by far the most common Connection values: nothing more to drop.
    nominated.discard(b"close")
    nominated -= NEVER_NOMINATED
    if nominated:
        kept = [h for h in kept if h[0] not in nominated]
    if te_trailers:
        kept.append(_TE_TRAILERS)
    return kept
