"""The HTTP caching rules of Envoy's cache filter (meshpy.extensions.cache_headers), case by case: the
cache-control directives as Envoy 1.40 reads them (each quirk here was seen on the binary), dates,
ages, freshness, what may be served and stored, ranges, Vary keys and the refresh of a stored head."""

from __future__ import annotations

import calendar

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshpy.extensions.cache_headers import (
    FOREVER,
    RequestCacheControl,
    ResponseCacheControl,
    age,
    http_time,
    joined,
    ranges,
    requires_validation,
    servable,
    storable,
    updated,
    vary_key,
    vary_values,
)

T0 = float(calendar.timegm((2024, 1, 1, 0, 0, 0)))
DATE = "Mon, 01 Jan 2024 00:00:00 GMT"


def cc(value: str) -> ResponseCacheControl:
    return ResponseCacheControl.of([("cache-control", value)])


@pytest.mark.parametrize(("value", "max_age"), [
    ("max-age=100", 100), ("Max-Age=100", 100), ("MAX-AGE=100", 100),  # names without case
    (" max-age = 100 ", None), ("max-age =100", None),  # a blank before "=" spoils the name
    ("max-age= 100", 100), ("max-age=100 ", 100),  # the number may have blanks around
    ("max-age=+100", 100), ("max-age=0100", 100), ("max-age=-1", None), ("max-age=1e3", None),
    ("max-age=99999999999999999999", None), ('max-age="100"', 100), ('max-age="100', None),
    ("max-age=100;x", None), ("max-age=100, max-age=0", 100),  # the first max-age wins
    ("max-age=100, s-maxage=5", 5), ("s-maxage=5, max-age=100", 5),  # s-maxage wins over it
    ("s-maxage=abc, max-age=100", 100), ('"max-age=100"', None), ("public", None),
])
def test_max_age_as_envoy_reads_it(value: str, max_age: int | None) -> None:
    assert cc(value).max_age == max_age


def test_response_directives() -> None:
    assert cc("NO-STORE").no_store and cc("Private").no_store and cc("private=x").no_store
    assert cc('no-cache="set-cookie"').must_validate and not cc("no-cache").no_store
    assert cc("must-revalidate").no_stale and cc("proxy-revalidate").no_stale
    # Repeated lines are one value, as Envoy keeps cache-control in one header-map entry.
    two = [("cache-control", "public"), ("cache-control", "max-age=7")]
    assert ResponseCacheControl.of(two).max_age == 7


def test_request_directives_and_pragma() -> None:
    r = RequestCacheControl.of([("cache-control", "No-Cache, no-store, max-age=5, min-fresh=3, max-stale")])
    # (names without case, as for answers)
    assert (r.must_validate, r.no_store, r.max_age, r.min_fresh, r.max_stale) == (True, True, 5, 3, FOREVER)
    assert RequestCacheControl.of([("cache-control", "max-stale=abc")]).max_stale is None
    assert RequestCacheControl.of([("pragma", "no-cache")]).must_validate
    # Pragma counts only without cache-control, and only for no-cache.
    assert not RequestCacheControl.of([("pragma", "no-cache"), ("cache-control", "max-age=9")]).must_validate
    assert not RequestCacheControl.of([("pragma", "no-store")]).no_store


@pytest.mark.parametrize("text", [
    "Mon, 01 Jan 2024 00:00:00 GMT", "Monday, 01-Jan-24 00:00:00 GMT", "Mon Jan  1 00:00:00 2024",
    "Mon, 1 Jan 2024 00:00:00 GMT", "Monday, 01 January 2024 00:00:00 GMT",
    "  Mon, 01 Jan 2024 00:00:00 GMT ",
])
def test_the_three_date_formats(text: str) -> None:
    assert http_time(text) == T0


@pytest.mark.parametrize("text", ["", "yesterday", "Mon, 01 Jan 2024 00:00:00 UTC",
                                  "Mon, 01 Foo 2024 00:00:00 GMT", "Xyz, 01 Jan 2024 00:00:00 GMT",
                                  "Mon, 01 Jan 2024 25:00:00 GMT", "1704067200"])
def test_dates_that_are_not_http_dates(text: str) -> None:
    assert http_time(text) is None


def test_two_digit_years_and_the_epoch() -> None:
    assert http_time("Thursday, 01-Jan-70 00:00:00 GMT") == 0.0
    assert http_time("Friday, 01-Jan-68 00:00:00 GMT") == float(calendar.timegm((2068, 1, 1, 0, 0, 0)))


@given(st.integers(min_value=0, max_value=4_000_000_000))
def test_dates_read_back(seconds: int) -> None:
    from email.utils import formatdate
    assert http_time(formatdate(seconds, usegmt=True)) == float(seconds)


def test_age() -> None:
    fields = [("date", DATE)]
    assert age(fields, T0 + 2.5, T0 + 10.9) == 10  # its Date's distance to arrival, plus its time here
    assert age([*fields, ("age", "30")], T0, T0 + 5) == 35  # its own Age when larger
    assert age([*fields, ("age", "x")], T0, T0 + 5) == 5
    assert age([("date", "Mon, 01 Jan 2024 00:01:00 GMT")], T0, T0 + 5) == 5  # a Date ahead: nought
    assert age([], T0, T0) == int(T0)  # no Date: as old as the epoch


@pytest.mark.parametrize(("request_cc", "response_cc", "current", "validate"), [
    ("", "max-age=10", 5, False), ("", "max-age=10", 10, False), ("", "max-age=10", 11, True),
    ("", "max-age=0", 0, False),  # fresh for the rest of its second
    ("", "no-cache, max-age=100", 0, True), ("no-cache", "max-age=100", 0, True),
    ("max-age=4", "max-age=100", 5, True), ("max-age=5", "max-age=100", 5, False),
    ("max-stale=10", "max-age=10", 15, False), ("max-stale=5", "max-age=10", 15, True),
    ("max-stale", "max-age=10", 10_000, False), ("max-stale", "max-age=10, must-revalidate", 11, True),
    ("min-fresh=6", "max-age=10", 5, True), ("min-fresh=5", "max-age=10", 5, False),
])
def test_freshness(request_cc: str, response_cc: str, current: int, validate: bool) -> None:
    request = RequestCacheControl.of([("cache-control", request_cc)] if request_cc else [])
    fields = [("cache-control", response_cc), ("date", DATE)]
    assert requires_validation(request, fields, current) is validate


def test_freshness_from_expires() -> None:
    fields = [("date", DATE), ("expires", "Mon, 01 Jan 2024 00:01:40 GMT")]
    assert not requires_validation(RequestCacheControl(), fields, 100)
    assert requires_validation(RequestCacheControl(), fields, 101)


def allowed(name: str) -> bool:
    return name == "accept-language"


STATUSES = [(s, [("cache-control", "max-age=1")], s not in (302, 307, 500, 503))
            for s in (200, 203, 204, 206, 300, 301, 302, 307, 308, 404, 405, 410, 414, 451, 500, 501, 503)]


@pytest.mark.parametrize(("status", "fields", "ok"), [
    *STATUSES,
    (200, [("cache-control", "public")], False),  # no lifetime to go by
    (200, [("cache-control", "no-cache")], True),  # stored, always validated
    (200, [("date", DATE), ("expires", DATE)], True), (200, [("expires", DATE)], False),
    (200, [("cache-control", "private, max-age=1")], False),
    (200, [("cache-control", "max-age=1, no-store")], False),
    (200, [("cache-control", "max-age=1"), ("vary", "accept-language")], True),
    (200, [("cache-control", "max-age=1"), ("vary", "Accept-Language")], False),  # the allow list's case
    (200, [("cache-control", "max-age=1"), ("vary", "accept-language, *")], False),
    (200, [("cache-control", "max-age=1"), ("vary", "")], True),  # an empty Vary is none
    (200, [("cache-control", "max-age=1"), ("set-cookie", "a=1")], True),
])
def test_what_may_be_stored(status: int, fields: list[tuple[str, str]], ok: bool) -> None:
    assert storable(status, fields, allowed) is ok


def test_what_may_be_served() -> None:
    assert servable("GET", "/a", "h", [])
    assert servable("HEAD", "/a", "h", [("x-forwarded-proto", "HTTPS")])
    assert not servable("POST", "/a", "h", [])
    assert not servable("GET", "", "h", [])  # CONNECT
    assert not servable("GET", "/a", "", [])
    for name in ("authorization", "if-none-match", "if-modified-since", "if-range"):
        assert not servable("GET", "/a", "h", [(name, "x")])
    for name in ("if-match", "if-unmodified-since"):  # caches may ignore these
        assert servable("GET", "/a", "h", [(name, "x")])
    assert not servable("GET", "/a", "h", [("x-forwarded-proto", "ftp")])


@pytest.mark.parametrize(("value", "found"), [
    ("bytes=2-4", (True, ((2, 5),))), ("bytes=-3", (True, ((7, 10),))), ("bytes=5-", (True, ((5, 10),))),
    ("bytes=0-", (True, ())), ("bytes=0-100", (True, ())),
    ("bytes=-10", (True, ())),  # the whole body: a plain answer
    ("bytes=20-30", (False, ())), ("bytes=-0", (False, ())), ("bytes=10-", (False, ())),
    ("bytes=1-2,4-5", None), ("items=1-2", None), ("bytes=4-2", None), ("bytes=-", None), ("bytes=a-b", None),
    ("bytes=1-2 ", None), ("bytes=99999999999999999999-", None),  # its digits overflow
])
def test_ranges(value: str, found: tuple[bool, tuple[tuple[int, int], ...]] | None) -> None:
    got = ranges([("range", value)], 10)
    assert (None if got is None else (got.satisfiable, got.spans)) == found


def test_ranges_of_an_empty_body_and_of_two_headers() -> None:
    got = ranges([("range", "bytes=0-1")], 0)
    assert got is not None and not got.satisfiable
    assert ranges([("range", "bytes=0-1"), ("range", "bytes=2-3")], 10) is None
    assert ranges([], 10) is None


def test_vary_values_and_keys() -> None:
    assert vary_values([("vary", "b, a"), ("vary", "a,,c")]) == ["a", "b", "c"]
    assert vary_values([("vary", "")]) is None and vary_values([]) is None
    request = [("accept-language", "en"), ("accept-language", "fr")]
    assert vary_key(["accept-language"], allowed, request) == "vary-id\naccept-language\ren\rfr\n"
    assert vary_key(["accept-language"], allowed, []) == "vary-id\naccept-language\r\n"
    assert vary_key(["user-agent"], allowed, request) is None


def test_a_304_refreshes_a_stored_head() -> None:
    stored = [("cache-control", "max-age=1"), ("date", "old"), ("etag", '"1"'), ("x", "1"), ("x", "2"),
              ("content-length", "5"), ("vary", "a")]
    fresh = [("date", "new"), ("x", "3"), ("x", "4"), ("etag", '"2"'), ("content-length", "0"), ("vary", "b"),
             ("y", "1")]
    assert updated(stored, fresh) == [
        ("cache-control", "max-age=1"), ("date", "new"), ("etag", '"1"'), ("x", "3"), ("content-length", "5"),
        ("vary", "a"), ("x", "4"), ("y", "1")]


def test_joined() -> None:
    fields = [("cache-control", "a"), ("cache-control", "b"), ("x", "1"), ("x", "2")]
    assert joined(fields, "cache-control") == "a,b"
    assert joined(fields, "x") == "1"
    assert joined(fields, "y") is None
