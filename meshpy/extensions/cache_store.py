"""The in-memory store of the cache filter (Envoy's SimpleHttpCache), bounded.

Entries are keyed as Envoy 1.40 keys them: scheme, host (the authority as sent) and path with its
query; an answer with an allowed Vary is stored under that key plus what the request sent of the
varied headers, and the bare key then holds a marker naming the varied headers, so that a lookup knows
which of the request's headers to add (simple_http_cache.cc: varyInsert, varyLookup). As there, a plain
answer stored at a key replaces its marker, and a varied answer does not replace a plain one already
stored.

Envoy's store never forgets. Here it is bounded: an entry counts its body, its header fields and a
fixed overhead, and the least recently used entries are dropped while the total is over `capacity`;
an answer whose body is over `max_entry` is not stored at all.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from meshpy.extensions.cache_headers import Fields, vary_key, vary_values

Key = tuple[str, str, str]  # scheme, host, path
_OVERHEAD = 256  # bytes an entry costs besides its fields and body (objects, dict slot), roughly


@dataclass(slots=True)
class Entry:
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    response_time: float  # when its head arrived (wall clock): the base of its age
    size: int = 0

    def __post_init__(self) -> None:
        self.measure()

    def measure(self) -> None:
        self.size = _OVERHEAD + len(self.body) + sum(len(n) + len(v) + 4 for n, v in self.headers)


class Store:
    """One cache filter's entries (one instance per filter config, kept across reloads)."""

    __slots__ = ("_entries", "capacity", "max_entry", "used")

    def __init__(self, capacity: int, max_entry: int) -> None:
        self.capacity = capacity
        self.max_entry = max_entry
        self.used = 0
        self._entries: OrderedDict[tuple[Key, str | None], Entry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, key: Key, request: Fields, vary_allowed: Callable[[str], bool]) -> Entry | None:
        entry = self._get((key, None))
        if entry is None:
            return None
        varied = vary_values(entry.headers)
        if varied is None:
            return entry
        vid = vary_key(varied, vary_allowed, request)
        return None if vid is None else self._get((key, vid))

    def insert(self, key: Key, entry: Entry, request: Fields, vary_allowed: Callable[[str], bool]) -> bool:
        """Store `entry` for a request to `key`; False when it is not (too large, or its Vary names a
        header no longer allowed)."""
        if len(entry.body) > self.max_entry or entry.size > self.capacity:
            return False
        varied = vary_values(entry.headers)
        if varied is None:
            self._put((key, None), entry)
            return True
        vid = vary_key(varied, vary_allowed, request)
        if vid is None:
            return False
        self._put((key, vid), entry)
        if (key, None) not in self._entries:
            self._put((key, None), Entry(0, [("vary", ",".join(varied))], b"", entry.response_time))
        return True

    def entry_for(self, key: Key, request: Fields, vary_allowed: Callable[[str], bool]) -> Entry | None:
        """The entry a lookup would find, without counting it as used (a 304's refresh)."""
        plain = self._entries.get((key, None))
        if plain is None:
            return None
        varied = vary_values(plain.headers)
        if varied is None:
            return plain
        vid = vary_key(varied, vary_allowed, request)
        return None if vid is None else self._entries.get((key, vid))

    def refresh(self, entry: Entry, headers: list[tuple[str, str]], response_time: float) -> None:
        """Give a stored entry the head of the answer that validated it, and a new base for its age."""
        before = entry.size
        entry.headers = headers
        entry.response_time = response_time
        entry.measure()
        self.used += entry.size - before
        self._evict()

    def _get(self, slot: tuple[Key, str | None]) -> Entry | None:
        entry = self._entries.get(slot)
        if entry is not None:
            self._entries.move_to_end(slot)
        return entry

    def _put(self, slot: tuple[Key, str | None], entry: Entry) -> None:
        old = self._entries.pop(slot, None)
        if old is not None:
            self.used -= old.size
        self._entries[slot] = entry
        self.used += entry.size
        self._evict()

    def _evict(self) -> None:
        entries = self._entries
        while self.used > self.capacity and entries:
            _, dropped = entries.popitem(last=False)
            self.used -= dropped.size
