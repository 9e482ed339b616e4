"""HTTP/1.1 request heads, in process: llhttp (httptools) drives meshpy's request codec the way
Http1Downstream and the exchange do (RequestFacts, the Host check, Transfer-Encoding, absolute-form
targets), then the head meshpy would send upstream is built (meshpy.stack.forwarding) and parsed again.

Properties:
- nothing but llhttp's HttpParserError (and BadRequest from a callback: a 400) comes out of a feed;
  any other exception raised in a callback would be masked as a plain 400 by the downstream, so the
  harness re-raises it as the crash it is;
- the upstream head re-parses with llhttp to the same method, target and header list, with the same
  framing (no header injected, none lost, Content-Length and chunked as decided): what meshpy forwards
  means to the next hop what meshpy understood.
"""

from __future__ import annotations

import httptools
from fuzzkit import Finding, Target

from meshpy.codec.http1 import (
    HOST_CHARS,
    authority_with_port,
    check_transfer_encoding,
    request_head,
    split_absolute_form,
)
from meshpy.codec.request_facts import SCANNED, RequestFacts
from meshpy.errors import BadRequest
from meshpy.stack.forwarding import upstream_request_headers

SEGMENT = b"|SEG|"  # seeds mark TCP segment boundaries so; in process the parts are fed one by one


class _Head:
    """One request as the downstream sees it (callbacks as in meshpy.transport.downstream_http1)."""

    def __init__(self) -> None:
        self.target = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.facts = RequestFacts()


class _Downstream:
    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.cur = _Head()
        self.heads: list[tuple[bytes, bytes, list[tuple[bytes, bytes]], RequestFacts]] = []

    def on_message_begin(self) -> None:
        self.cur = _Head()

    def on_url(self, url: bytes) -> None:
        self.cur.target += url

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name in SCANNED:
            self.cur.facts.note(name, value, len(self.cur.headers))
        self.cur.headers.append((name, value))

    def on_headers_complete(self) -> None:
        head, facts = self.cur, self.cur.facts
        host = facts.authority
        if host is not None and host.translate(None, HOST_CHARS) and not authority_with_port(host):
            raise BadRequest("invalid host header")
        method = self.parser.get_method()
        http10 = self.parser.get_http_version() == "1.0"
        if facts.chunked:
            for name, value in head.headers:
                if name == b"transfer-encoding":
                    check_transfer_encoding(value)
        target = head.target
        if 0x23 in target:
            raise BadRequest("fragment in request target")
        absolute_host = None
        if target[:1] != b"/":
            if method == b"CONNECT":
                return  # a tunnel: nothing is forwarded as HTTP
            absolute_host, target = split_absolute_form(target)
            facts.authority = absolute_host
            head.headers = [(n, v) for n, v in head.headers if n != b"host"]
            head.headers.append((b"host", absolute_host))
        if facts.authority is None and not http10:
            raise BadRequest("missing host header")
        out = upstream_request_headers(head.headers, facts, peer="127.0.0.1", host=absolute_host,
                                       use_remote_address=True, forwarded_proto=True,
                                       request_id=b"00000000-0000-4000-8000-000000000000")
        self.heads.append((method, target, out, facts))


class _Reparse:
    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.done = False

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        self.done = True


def check_forwarded(method: bytes, target: bytes, out: list[tuple[bytes, bytes]],
                    facts: RequestFacts) -> None:
    wire = request_head(method, target, out)
    again = _Reparse()
    try:
        again.parser.feed_data(wire)
    except httptools.HttpParserUpgrade:
        pass
    except httptools.HttpParserError as err:
        raise Finding(f"forwarded head does not parse: {err}: {wire!r}") from None
    if not again.done:
        raise Finding(f"forwarded head incomplete: {wire!r}")
    if again.parser.get_method() != method or again.url != target:
        raise Finding(f"request line changed: {wire!r}")
    if again.headers != out:
        raise Finding(f"forwarded headers read differently: {out!r} -> {again.headers!r}")
    lengths = [v for n, v in out if n == b"content-length"]
    chunked = [v for n, v in out if n == b"transfer-encoding"]
    if facts.chunked and (lengths or chunked != [b"chunked"]):
        raise Finding(f"chunked request forwarded with other framing: {out!r}")
    if not facts.chunked and (chunked or len(lengths) > 1 or
                              (lengths and int(lengths[0]) != facts.content_length)):
        raise Finding(f"framing changed on the way upstream: {out!r}")


def run(data: bytes) -> None:
    down = _Downstream()
    for part in data.split(SEGMENT):
        try:
            down.parser.feed_data(part)
        except httptools.HttpParserUpgrade:
            break  # what follows is another protocol (tunnel, h2c relay): not this parser's
        except httptools.HttpParserCallbackError as err:
            ctx = err.__context__
            if isinstance(ctx, BadRequest):
                break
            raise ctx if ctx is not None else err from None
        except httptools.HttpParserError:
            break
    for method, target, out, facts in down.heads:
        check_forwarded(method, target, out, facts)


DICTIONARY = (
    b"GET ", b"POST ", b"CONNECT ", b"OPTIONS * ", b"HEAD ", b" HTTP/1.1\r\n", b" HTTP/1.0\r\n", b"\r\n",
    b"\r\n\r\n", b"Host: a\r\n", b"host: [::1]:80\r\n", b"Content-Length: ",
    b"Transfer-Encoding: chunked\r\n",
    b"Connection: ", b"keep-alive", b"close", b"Upgrade: websocket\r\n", b"Upgrade: h2c\r\n",
    b"Expect: 100-continue\r\n", b"TE: trailers\r\n", b"X-Forwarded-For: ", b"x-request-id: ",
    b"http://", b"https://", b"0\r\n\r\n", b"5\r\nhello\r\n", b";ext=1", SEGMENT, b"\t", b" ", b":", b",",
)

TARGET = Target(name="http1_request", run=run, dictionary=DICTIONARY, max_len=4096, time_limit=2.0)
