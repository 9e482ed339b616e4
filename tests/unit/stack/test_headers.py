"""HeaderOps (Envoy's header edit semantics) and hop-by-hop stripping."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshpy.errors import ConfigError
from meshpy.model.routes import HeaderAppend, HeaderEdits, HeaderValue
from meshpy.stack.headers import HOP_BY_HOP, HeaderOps, compile_edits, strip_hop_by_hop

Headers = list[tuple[bytes, bytes]]


def add(name: str, value: str, append: HeaderAppend = "append") -> HeaderValue:
    return HeaderValue(name=name, value=value, append=append)


def applied(headers: Headers, *levels: HeaderEdits) -> Headers:
    out = list(headers)
    ops = compile_edits(*levels)
    if ops:
        ops.apply(out)
    return out


# --- HeaderOps -----------------------------------------------------------------------------------------


def test_empty_edits_compile_to_a_falsy_no_op() -> None:
    ops = compile_edits(HeaderEdits(), HeaderEdits(), HeaderEdits(add=(add("x-empty", ""),)))
    assert not ops
    assert isinstance(ops, HeaderOps)
    headers: Headers = [(b"a", b"1")]
    ops.apply(headers)
    assert headers == [(b"a", b"1")]
    assert compile_edits(HeaderEdits(remove=("x",)))


@pytest.mark.parametrize(
    ("append", "before", "after"),
    [
        ("append", [(b"x", b"old")], [(b"x", b"old"), (b"x", b"new")]),
        ("append", [], [(b"x", b"new")]),
        ("add_if_absent", [(b"x", b"old")], [(b"x", b"old")]),
        ("add_if_absent", [], [(b"x", b"new")]),
        ("overwrite", [(b"x", b"1"), (b"y", b"y"), (b"x", b"2")], [(b"y", b"y"), (b"x", b"new")]),
        ("overwrite", [], [(b"x", b"new")]),
        ("overwrite_if_exists", [(b"x", b"1"), (b"y", b"y")], [(b"y", b"y"), (b"x", b"new")]),
        ("overwrite_if_exists", [(b"y", b"y")], [(b"y", b"y")]),
    ],
)
def test_append_actions(append: HeaderAppend, before: Headers, after: Headers) -> None:
    assert applied(before, HeaderEdits(add=(add("x", "new", append),))) == after


def test_removals_happen_before_additions_in_a_level() -> None:
    edits = HeaderEdits(add=(add("x-r", "added"),), remove=("x-r",))
    assert applied([(b"x-r", b"client")], edits) == [(b"x-r", b"added")]


def test_names_are_lower_cased_and_values_utf8() -> None:
    edits = HeaderEdits(add=(add("X-Caf", "caf\u00e9"),), remove=("X-Gone",))
    assert applied([(b"x-gone", b"1")], edits) == [(b"x-caf", "caf\u00e9".encode())]


def test_one_level_like_envoy_1_40() -> None:
    # Observed on envoy 1.40 (response_headers_to_add/remove on one route): overwrites land first,
    # then appends; both add_if_absent entries are added since the header was absent before the level.
    edits = HeaderEdits(
        remove=("x-r",),
        add=(
            add("x-r", "added"),
            add("x-w", "appended"),
            add("x-w", "over", "overwrite"),
            add("x-empty", ""),
            add("x-ifabs", "one", "add_if_absent"),
            add("x-ifabs", "two", "add_if_absent"),
        ),
    )
    assert applied([(b"x-r", b"upstream")], edits) == [
        (b"x-w", b"over"),
        (b"x-r", b"added"),
        (b"x-w", b"appended"),
        (b"x-ifabs", b"one"),
        (b"x-ifabs", b"two"),
    ]


def test_levels_apply_in_order_so_the_last_overwrite_wins() -> None:
    route = HeaderEdits(add=(add("x-o", "route", "overwrite"), add("x-a", "route")))
    vhost = HeaderEdits(add=(add("x-o", "vhost", "overwrite"), add("x-a", "vhost", "add_if_absent")))
    config = HeaderEdits(add=(add("x-o", "rc", "overwrite"),), remove=("x-drop",))
    assert applied([(b"x-drop", b"1")], route, vhost, config) == [(b"x-a", b"route"), (b"x-o", b"rc")]


def test_conditions_see_earlier_levels() -> None:
    first = HeaderEdits(add=(add("x", "1"),))
    second = HeaderEdits(add=(add("x", "2", "overwrite_if_exists"), add("y", "2", "add_if_absent")))
    assert applied([], first, second) == [(b"x", b"2"), (b"y", b"2")]


def test_same_name_overwritten_twice_in_a_level_keeps_the_last() -> None:
    edits = HeaderEdits(
        add=(add("x", "1", "overwrite"), add("y", "y", "overwrite"), add("x", "2", "overwrite"))
    )
    assert applied([(b"x", b"0")], edits) == [(b"y", b"y"), (b"x", b"2")]


@pytest.mark.parametrize(
    ("edits", "reason"),
    [
        (HeaderEdits(add=(add(":path", "/x"),)), "may not be modified"),
        (HeaderEdits(remove=(":authority",)), "may not be removed"),
        (HeaderEdits(remove=("Host",)), "may not be removed"),
        (HeaderEdits(add=(add("", "v"),)), "must not be empty"),
    ],
)
def test_forbidden_edits_are_config_errors(edits: HeaderEdits, reason: str) -> None:
    with pytest.raises(ConfigError, match=reason):
        compile_edits(edits)


def test_host_may_be_set_but_not_removed() -> None:
    assert applied([(b"host", b"a")], HeaderEdits(add=(add("host", "b", "overwrite"),))) == [(b"host", b"b")]


# Reference: Envoy's HeaderParser::evaluateHeaders, one level at a time, written out literally.
def reference_apply(headers: Headers, levels: list[HeaderEdits]) -> Headers:
    h = list(headers)
    for level in levels:
        for name in level.remove:
            h = [x for x in h if x[0] != name.lower().encode()]
        to_add, to_set = [], []
        for hv in level.add:
            if not hv.value:
                continue
            key, value = hv.name.lower().encode(), hv.value.encode()
            exists = any(x[0] == key for x in h)
            if hv.append == "append" or (hv.append == "add_if_absent" and not exists):
                to_add.append((key, value))
            elif hv.append == "overwrite" or (hv.append == "overwrite_if_exists" and exists):
                to_set.append((key, value))
        for key, value in to_set:  # HeaderMap::setReferenceKey: remove every line, add one at the end
            h = [x for x in h if x[0] != key]
            h.append((key, value))
        h.extend(to_add)
    return h


NAMES = ["a", "b", "X-C"]
header_values = st.builds(
    HeaderValue,
    name=st.sampled_from(NAMES),
    value=st.sampled_from(["", "1", "2", "\u00e9"]),
    append=st.sampled_from(["append", "add_if_absent", "overwrite", "overwrite_if_exists"]),
)
levels = st.lists(
    st.builds(
        HeaderEdits,
        add=st.lists(header_values, max_size=4).map(tuple),
        remove=st.lists(st.sampled_from(NAMES), max_size=2).map(tuple),
    ),
    max_size=3,
)
wire_headers = st.lists(
    st.tuples(st.sampled_from([b"a", b"b", b"x-c", b"d"]), st.sampled_from([b"0", b"9"])), max_size=5
)


@settings(max_examples=300, deadline=None)
@given(levels=levels, headers=wire_headers)
def test_header_ops_agree_with_reference(levels: list[HeaderEdits], headers: Headers) -> None:
    ops = compile_edits(*levels)
    got = list(headers)
    ops.apply(got)
    assert got == reference_apply(headers, levels)
    again = list(headers)
    ops.apply(again)  # compiled ops hold no per-request state
    assert again == got
    assert bool(ops) == any(lv.remove or any(hv.value for hv in lv.add) for lv in levels)


# --- hop-by-hop ----------------------------------------------------------------------------------------


def test_plain_headers_pass_through_as_a_new_list() -> None:
    headers: Headers = [
        (b"host", b"h"),
        (b"accept", b"*/*"),
        (b"trailer", b"x"),
        (b"proxy-authorization", b"p"),
    ]
    out = strip_hop_by_hop(headers)
    assert out == headers
    assert out is not headers


def test_standard_hop_by_hop_headers_are_removed() -> None:
    headers: Headers = [
        (b"connection", b"keep-alive"),
        (b"keep-alive", b"timeout=5"),
        (b"proxy-connection", b"keep-alive"),
        (b"transfer-encoding", b"chunked"),
        (b"upgrade", b"websocket"),
        (b"te", b"gzip"),
        (b"x-keep", b"1"),
    ]
    assert strip_hop_by_hop(headers) == [(b"x-keep", b"1")]


def test_headers_named_by_connection_are_removed() -> None:
    headers: Headers = [
        (b"x-secret", b"1"),
        (b"connection", b"X-Secret , other,,close"),
        (b"other", b"2"),
        (b"x-keep", b"3"),
        (b"connection", b"x-later"),
        (b"x-later", b"4"),
    ]
    assert strip_hop_by_hop(headers) == [(b"x-keep", b"3")]


@pytest.mark.parametrize(
    ("te", "kept"),
    [
        (b"trailers", True),
        (b"gzip, Trailers", True),
        (b"trailers;q=1", True),
        (b"gzip", False),
        (b"trailersx", False),
    ],
)
def test_te_keeps_only_trailers(te: bytes, kept: bool) -> None:
    out = strip_hop_by_hop([(b"te", te), (b"x", b"1")])
    assert out == ([(b"x", b"1"), (b"te", b"trailers")] if kept else [(b"x", b"1")])


def reference_strip(headers: Headers) -> Headers:
    nominated = {
        t.strip().lower() for n, v in headers if n == b"connection" for t in v.split(b",") if t.strip()
    } - {b"close"}
    te = [t.split(b";")[0].strip().lower() for n, v in headers if n == b"te" for t in v.split(b",")]
    out = [h for h in headers if h[0] not in HOP_BY_HOP and h[0] not in nominated]
    return [*out, (b"te", b"trailers")] if b"trailers" in te else out


@settings(max_examples=300, deadline=None)
@given(
    headers=st.lists(
        st.tuples(
            st.sampled_from([b"connection", b"te", b"upgrade", b"x-a", b"x-b", b"host", b"keep-alive"]),
            st.sampled_from(
                [b"", b"x-a", b"X-A, x-b", b"close", b"trailers", b"gzip,trailers", b"keep-alive"]
            ),
        ),
        max_size=6,
    )
)
def test_strip_hop_by_hop_agrees_with_reference(headers: Headers) -> None:
    assert strip_hop_by_hop(headers) == reference_strip(headers)
