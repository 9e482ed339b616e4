"""What fuzzing found, one test each, beside the `regress-*` corpus input that test_fuzz_targets replays.
The tests say what the right behaviour is, so that a fix is checked directly and not only by "no
crash". A finding not fixed yet is a strict xfail here, listed in known.py (none today):
they turn into failures (XPASS) once fixed, and then the mark and the known.py entry go.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import fuzz_http1_upstream
import fuzz_world
import pytest
from fuzz_http2 import PREFACE
from fuzz_xds import TYPES
from fuzzkit import CORPUS
from google.protobuf import any_pb2, text_format

from meshpy.app import App
from meshpy.codec.raw_head import split_head
from meshpy.errors import ConfigError
from meshpy.model.load import load_text
from meshpy.model.types import Config, XdsSource
from meshpy.xds.client import AdsClient
from meshpy.xds.client_streams import Rejected
from meshpy.xds.deps import NO_ROUTES
from meshpy.xds.store import LISTENER, MESSAGES
from meshpy.xds.translate import cluster_from_proto, listener_from_proto


def corpus_text(target: str, name: str) -> str:
    return (CORPUS / target / name).read_text()


def issues(text: str) -> list[str]:
    with pytest.raises(ConfigError) as err:
        load_text(text)
    return [str(i) for i in err.value.issues]


# -- Envoy bootstraps: json_format's own exceptions on odd Any shapes ---------------------------------
def test_any_type_that_is_not_a_string_is_a_config_error() -> None:
    # Was AttributeError ('dict' object has no attribute 'split') out of json_format.ParseDict.
    assert issues(corpus_text("bootstrap", "regress-any-type-not-a-string")) == [
        "static_resources.listeners[0].filter_chains[0].filters[0].typed_config.@type: must be a type URL, "
        "got a dict"]


def test_any_of_a_well_known_type_without_value_is_a_config_error() -> None:
    # Was KeyError: 'value' out of json_format.ParseDict.
    assert issues(corpus_text("bootstrap", "regress-any-well-known-type-without-value")) == [
        "static_resources.listeners[0].filter_chains[0].filters[0].typed_config.http_filters[0]"
        ".typed_config: an Any holding google.protobuf.Struct needs its JSON under `value`"]


def test_bootstrap_header_edits_must_be_http() -> None:
    """A header edit's name that is no token (`x b:é` crashed the route compile with UnicodeEncodeError)
    and a value with CRLF (which would have added a header line to every request) are refused, as
    meshpy's YAML and Envoy's HTTP_HEADER_NAME/VALUE rules refuse them."""
    where = "static_resources.listeners[0].filter_chains[0].filters[0].typed_config.route_config"
    assert issues(corpus_text("bootstrap", "regress-header-edit-name-and-value-not-http")) == [
        f"{where}.request_headers_to_add[0].header.value: header values must not contain CR, LF or NUL",
        f"{where}.request_headers_to_add[1].header.key: 'x b:\xe9' is not a valid header name"]


def test_names_written_or_matched_as_bytes_must_be_http() -> None:
    """host_rewrite (both formats), header match names and hash-policy header names beyond latin-1
    crashed the route table with UnicodeEncodeError; now each is refused where it is written."""
    assert issues(corpus_text("meshpy_yaml", "regress-host-rewrite-beyond-latin-1")) == [
        "listeners[0].routes[0].host_rewrite: 'h\u20acst' is not a host or host:port"]
    route = ("static_resources.listeners[0].filter_chains[0].filters[0].typed_config.route_config"
             ".virtual_hosts[0].routes[0]")
    assert issues(corpus_text("bootstrap", "regress-route-names-beyond-latin-1")) == [
        f"{route}.match.headers[0].name: 'x\u20ac' is not a valid header name",
        f"{route}.route.host_rewrite_literal: 'h\u20acst' is not a host or host:port",
        f"{route}.route.hash_policy[0].header.header_name: 'y\u20ac' is not a valid header name"]


# -- YAML aliases --------------------------------------------------------------------------------------
def test_document_that_contains_itself_is_a_config_error() -> None:
    # Was RecursionError (json_format, and the bootstrap checks before it).
    assert issues(corpus_text("bootstrap", "regress-document-contains-itself")) == [
        "static_resources.listeners[0].address.x[0]: contains itself (a YAML alias inside its own anchor)"]


def test_aliases_that_expand_past_the_limit_are_a_config_error() -> None:
    # Ten lines that expand to 2.3e7 values: minutes of reading (and a canonical JSON of a filter
    # config as large) before; refused in the time it takes to count them now.
    assert issues(corpus_text("meshpy_yaml", "regress-aliases-expand-a-billion")) == [
        "the document expands to 23456799 values through its YAML aliases (at most 1000000)"]


# -- enum numbers no enum value has (proto3 enums are open) --------------------------------------------
def test_bootstrap_enum_numbers_not_defined_are_config_errors() -> None:
    # Was KeyError: 83648 (Cluster.type) from values_by_number.
    assert issues(corpus_text("bootstrap", "regress-enum-number-not-defined")) == [
        "static_resources.clusters[0].type: value 83648 is not supported by meshpy",
        "static_resources.clusters[0].lb_policy: value 77 is not supported by meshpy"]


def _resource(target_file: str) -> tuple[str, object]:
    kind, _, text = corpus_text("xds", target_file).partition("\n")
    msg = MESSAGES[TYPES[kind]]()
    text_format.Parse(text, msg)
    return kind, msg


def test_xds_cluster_enum_numbers_not_defined_are_config_errors() -> None:
    _, msg = _resource("regress-cluster-enum-numbers-not-defined")
    with pytest.raises(ConfigError) as err:
        cluster_from_proto(msg)
    assert [str(i) for i in err.value.issues] == ["type: value 99 is not supported by meshpy",
                                                  "lb_policy: value 98 is not supported by meshpy"]


def test_xds_codec_type_not_defined_is_a_config_error() -> None:
    _, msg = _resource("regress-hcm-codec-type-not-defined")
    with pytest.raises(ConfigError) as err:
        listener_from_proto(msg, "", {"r": NO_ROUTES})
    assert "filter_chains[0].filters[0].typed_config.codec_type: value 97 is not supported " \
           "(AUTO, HTTP1 and HTTP2 are)" in [str(i) for i in err.value.issues]


# -- the xDS client: a resource whose bytes do not decode ----------------------------------------------
def test_resource_bytes_that_do_not_decode_are_nacked() -> None:
    """Was DecodeError out of AdsClient.accept: the stream broke and reconnected, to get the same bytes
    again, instead of a NACK naming the resource."""
    data = (CORPUS / "xds" / "regress-resource-bytes-corrupt").read_bytes().partition(b"\n")[2]

    async def accept() -> str:
        app = App(asyncio.get_running_loop(), drain_time=0.0, grace_time=0.0)
        client = AdsClient(app, Config(), XdsSource(server="127.0.0.1:1", node_json='{"id": "n"}'))
        with pytest.raises(Rejected) as err:
            await client.accept(LISTENER, [any_pb2.Any(type_url=LISTENER, value=data)], (), True)
        return str(err.value)

    assert asyncio.run(accept()).startswith("resources[0]: cannot decode a Listener: ")


# -- known, fixes owned elsewhere -------------------------------------------------------------------
def test_listener_protocol_of_the_wrong_type_is_a_config_error() -> None:
    assert issues(corpus_text("meshpy_yaml", "regress-listener-protocol-a-mapping")) == [
        "listeners[0].protocol: must be http, auto, http1, http2 or tcp, got {'http': 1}"]


def test_request_head_cut_short_leaves_no_negative_gauge() -> None:
    """A request head cut short by the client's EOF: connection_lost ended the exchange that
    on_message_begin made, counting a request (status 0) that never started and taking rq_active to
    -1. Found here and by the soak; fixed in Http1Downstream.connection_lost (commit ec5d97c)."""
    data = (CORPUS / "http1_request" / "regress-head-cut-short-by-eof").read_bytes()
    with fuzz_world.world() as w:
        assert w.app is not None
        stats = w.app.listeners["web"].slot.current.stats
        before = stats.rq_by_code.get(0, 0), stats.rq_total
        w.run(w.converse([data], 3.0), 5.0)
        w.run(asyncio.sleep(0.05), 1.0)
        assert stats.rq_active == 0
        assert (stats.rq_by_code.get(0, 0), stats.rq_total) == before  # no request was ever started


def test_regression_inputs_are_in_the_corpus() -> None:
    """Every regress-* file is replayed by test_fuzz_targets (here: they exist and are small)."""
    found = sorted(Path(CORPUS).glob("*/regress-*"))
    assert len(found) >= 8
    assert all(p.stat().st_size < 16 * 1024 for p in found)


@pytest.mark.parametrize("name", ["regress-http09-request-line", "regress-no-host-refused-in-head"])
def test_request_refused_in_its_head_leaves_no_active_request(name: str) -> None:
    data = (CORPUS / "http1_request" / name).read_bytes()
    with fuzz_world.world() as w:
        assert w.app is not None
        stats = w.app.listeners["web"].slot.current.stats
        total = stats.rq_total
        got = w.run(w.converse([data], 3.0), 5.0)
        w.run(asyncio.sleep(0.05), 1.0)
        assert got.startswith(b"HTTP/1.1 400 ")
        assert (stats.rq_active, stats.rq_total) == (0, total + 1)


def test_unsolicited_101_is_not_forwarded() -> None:
    with fuzz_world.world() as w:
        w.script[:] = [(CORPUS / "http1_response" / "regress-unsolicited-101").read_bytes()]
        got = w.run(w.converse([fuzz_http1_upstream.REQUEST], 3.0), 5.0)
        assert got.startswith(b"HTTP/1.1 502 "), got


def test_goaway_with_an_error_after_a_request_in_one_read() -> None:
    data = (CORPUS / "http2" / "regress-goaway-after-malformed-request-in-one-read").read_bytes()
    with fuzz_world.world() as w:
        w.run(w.converse([PREFACE + data], 3.0, quiet=0.05), 5.0)
        assert not w.errors, w.errors


def test_status_below_100_is_an_upstream_protocol_error() -> None:
    with fuzz_world.world() as w:
        w.script[:] = [(CORPUS / "http1_response" / "regress-status-below-100").read_bytes()]
        got = w.run(w.converse([fuzz_http1_upstream.REQUEST], 3.0), 5.0)
        assert got.startswith(b"HTTP/1.1 502 "), got
        assert got.count(b"HTTP/1.1 ") == 1, got


# -- upstream heads: empty lines before the status line ------------------------------------------------
def test_empty_lines_before_an_upstream_status_line_are_skipped() -> None:
    """llhttp skips CRLFs before a status line (a stray CRLF after the previous body); split_head took
    the first CRLF for the end of the status line, so the status line went to the client as a header
    (`HTTP/1.1 200 OK` twice: no client parses that), or `\\r\\n\\r\\n` for the end of the head."""
    data = (CORPUS / "http1_response" / "regress-empty-line-before-status-line").read_bytes()
    assert split_head(data) == (b"\r\nContent-Length: 2\r\nX-A: b\r\n\r\n", b"ok")
    assert split_head(b"\r\n\r\n" + data) == split_head(data)
    with fuzz_world.world() as w:
        w.script[:] = [data]
        got = w.run(w.converse([fuzz_http1_upstream.REQUEST], 3.0), 5.0)
    head, _, body = got.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n") and head.count(b"HTTP/1.1") == 1, got
    assert b"\r\nX-A: b" in head and body == b"ok"


def test_broken_body_of_a_pipelined_request_is_answered_in_turn() -> None:
    data = (CORPUS / "http1_request" / "regress-pipelined-request-with-a-broken-chunk").read_bytes()
    with fuzz_world.world() as w:
        got = w.run(w.converse([data], 3.0), 5.0)
    assert got.startswith(b"HTTP/1.1 200 OK\r\n"), got
    assert b"ok" + b"HTTP/1.1 400 Bad Request\r\n" in got, got


@pytest.mark.parametrize("name", ["regress-interim-with-content-length", "regress-interim-with-a-body"])
def test_interim_answers_carry_no_body_and_no_framing(name: str) -> None:
    with fuzz_world.world() as w:
        w.script[:] = [(CORPUS / "http1_response" / name).read_bytes()]
        got = w.run(w.converse([fuzz_http1_upstream.REQUEST], 3.0), 5.0)
    final = got.rfind(b"HTTP/1.1 502 ")
    assert final >= 0, got
    for interim in got[:final].split(b"\r\n\r\n")[:-1]:
        assert interim.startswith(b"HTTP/1.1 1") and b"content-length" not in interim.lower(), got
    assert got[:final].endswith(b"\r\n\r\n") or final == 0, got  # nothing raw between the heads


def test_local_answer_on_a_stream_h2_closed_in_the_same_read() -> None:
    data = (CORPUS / "http2" / "regress-headers-twice-on-a-stream-answered-locally").read_bytes()
    with fuzz_world.world() as w:
        w.run(w.converse([PREFACE + data], 3.0, quiet=0.05), 5.0)
        assert not w.errors, w.errors


def test_every_known_finding_has_its_strict_xfail() -> None:
    """known.py silences a finding in fuzz runs only while a strict xfail here waits for its fix, and
    an xfail here is always a known finding: the two lists are the same."""
    import sys

    import known

    this = sys.modules[__name__]
    expected = {name for entry in known.KNOWN for name in entry.test.split(", ")}
    tests = [name for name in dir(this) if name.startswith("test_")]
    marks = {name: getattr(getattr(this, name), "pytestmark", []) for name in tests}
    marked = {name for name, ms in marks.items()
              if any(m.name == "xfail" and m.kwargs.get("strict") is True for m in ms)}
    assert marked == expected
