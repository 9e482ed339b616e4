"""The HTTP/1.1 request-smuggling (desync) probe corpus for tests/integration/test_desync_envoy.py.

Our own generator. It reproduces the mutation families of three public corpora (their code is not
copied; the families and their exploit shapes are re-stated here):

- defparam/smuggler (`configs/default.py`, `configs/doubles.py`, `configs/exhaustive.py`): the
  Transfer-Encoding header with a byte from 0x00-0x20 / 0x7f-0xff before the name, before the colon,
  in place of the space, after the value, in pairs of those places, and around a neighbouring header
  line; name and value spellings (space/underscore joins, case, quotes, `chunk`, `cow` codings, accents,
  line wraps). smuggler.py probes each in a CL.TE and a TE.CL shape.
- PortSwigger/http-request-smuggler (`src/burp/DesyncBox.java`): the same kind of Transfer-Encoding
  permutations (`nameprefix`, `vertwrap`, `badsetupCR/LF`, `0dwrap`, `gareth1`, `spjunk`, `backslash`,
  `connection`, `nel`/`nbsp`/`shy`, `qencode`, special characters 0x00 0x09 0x0b 0x0c 0x0d 0x7f as
  prefix/suffix/name suffix, ...) and its Content-Length permutations (`CL-plus`, `CL-minus`, `CL-pad`,
  `CL-bigpad`, `CL-e`, `CL-dec`, `CL-commaprefix/suffix`, `CL-expect`, `CL-error`, `CL-spacepad`).
- narfindustries/http-garden (`TROPHIES.md`): the payloads of its server and transducer bug list
  (chunk-size prefixes like `0x`/`+`/`_`, `\\r` as a line end, empty Content-Length, `,chunked`, NUL in
  values, bare LF chunk lines, ...), re-targeted at the suite's origin.

plus hand-written cases from an audit of meshpy (Connection-nominated framing headers, upgrades with
bodies, Host and request-target forms, HTTP/1.0 chunked, CL spellings, Expect, TCP segmentation) and a
few plain requests that every proxy must forward unchanged (the baseline).

Every probe carries the tag `q@@@@z` in its request target and an `X-Probe` header (and in the target of
any request it hides in a body); the test replaces it with `q<4-digit probe number>z`, so that whatever
reaches the origin (a request, or bytes it refused) can be traced back to its probe. Lengths are
computed with the tag in place; the number has the same width.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

TAG = b"q@@@@z"  # becomes q0000z ... q9999z: the probe's number, self-delimiting in any bytes
HOST = b"desync.test"
SMUGGLED_PREFIX = "/SMUGGLED/"  # every hidden request's target starts so (then the probe's number)

SOURCES = {
    "smuggler": "github.com/defparam/smuggler: configs/default.py, doubles.py, exhaustive.py and the "
                "CL.TE / TE.CL probe bodies of smuggler.py",
    "burp": "github.com/PortSwigger/http-request-smuggler: src/burp/DesyncBox.java (Transfer-Encoding "
            "and Content-Length permutations) and resources/CL-TE.py, TE-CL.py",
    "garden": "github.com/narfindustries/http-garden: the payloads of TROPHIES.md",
    "audit": "hand-written from an audit of meshpy (Connection, Upgrade, Host, targets, HTTP/1.0, Expect, "
             "segmentation)",
    "baseline": "well-formed requests (RFC 9112) that must pass unchanged",
}


@dataclass(frozen=True)
class Probe:
    name: str  # "<family>/<variant>", unique in the corpus
    source: str  # a key of SOURCES
    parts: tuple[bytes, ...]  # what the client sends, one TCP segment each, with TAG in place

    def family(self) -> str:
        return self.name.split("/", 1)[0]

    def wire(self, number: int) -> tuple[bytes, ...]:
        tag = tag_of(number)
        assert len(tag) == len(TAG), "the probe number must keep the tag's width (lengths depend on it)"
        return tuple(p.replace(TAG, tag) for p in self.parts)


def tag_of(number: int) -> bytes:
    return f"q{number:04d}z".encode()


# -- building blocks -----------------------------------------------------------------------------------
def smuggled(extra: bytes = b"") -> bytes:
    """A whole GET that must never reach the origin as a request of its own (unless the proxy itself
    parsed it as one). Its answer is slow, so that a desync also delays or misroutes the next client's
    answer on that upstream connection."""
    return (b"GET " + SMUGGLED_PREFIX.encode() + TAG + b"?sleep=0.6 HTTP/1.1\r\nHost: " + HOST + b"\r\n"
            + extra + b"\r\n")


def request(method: bytes, lines: list[bytes], body: bytes = b"", *, target: bytes = b"",
            version: bytes = b"HTTP/1.1", host: bool = True) -> bytes:
    """A request with `lines` (raw header lines, CRLF added) after Host. `target` replaces the default
    tagged origin-form target; it should contain TAG."""
    target = target or b"/p/" + TAG
    head = method + b" " + target + b" " + version + b"\r\n"
    if host:
        head += b"Host: " + HOST + b"\r\n"
    head += b"X-Probe: " + TAG + b"\r\n"  # traces the request even where the target loses the tag
    return head + b"".join(line + b"\r\n" for line in lines) + b"\r\n" + body


def chunk(data: bytes) -> bytes:
    return f"{len(data):x}".encode() + b"\r\n" + data + b"\r\n"


LAST_CHUNK = b"0\r\n\r\n"


def cl_te(gadget: bytes) -> bytes:
    """CL.TE: Content-Length covers a terminating chunk and a whole request. A hop that frames by
    Content-Length and passes the (mutated) Transfer-Encoding on makes a chunked reader end the body at
    `0`, and the rest is a request of its own."""
    body = LAST_CHUNK + smuggled()
    return request(b"POST", [gadget, b"Content-Length: %d" % len(body)], body)


def te_cl(gadget: bytes) -> bytes:
    """TE.CL: a chunked body whose first chunk is a whole request, with a Content-Length that covers only
    the chunk-size line. A hop that de-chunks by the mutated header but passes Content-Length on makes a
    Content-Length reader stop after the size line; the chunk's data is then a request. The hidden
    request's own Content-Length eats the chunk trailer (CRLF, `0`, CRLF CRLF)."""
    hidden = smuggled(b"Content-Length: 7\r\n")
    size_line = f"{len(hidden):x}\r\n".encode()
    body = size_line + hidden + b"\r\n" + LAST_CHUNK
    return request(b"POST", [b"Content-Length: %d" % len(size_line), gadget], body)


def te_te(gadget: bytes, first: bool) -> bytes:
    """TE.TE: a plain `Transfer-Encoding: chunked` and a mutated one (one hop may honour one, the other
    the other), with the CL.TE body."""
    plain = b"Transfer-Encoding: chunked"
    body = LAST_CHUNK + smuggled()
    lines = [gadget, plain] if first else [plain, gadget]
    return request(b"POST", [*lines, b"Content-Length: %d" % len(body)], body)


TE = b"Transfer-Encoding"
CHUNKED = b"chunked"


# -- Transfer-Encoding mutations ---------------------------------------------------------------------
def te_named() -> Iterator[tuple[str, str, bytes]]:
    """(variant, source, gadget): the spelled-out Transfer-Encoding permutations."""
    v = TE + b": " + CHUNKED
    s, b = "smuggler", "burp"
    yield "vanilla", b, v
    yield "nameprefix1", s, b" " + v  # a leading space: obs-fold of the previous line (Host)
    yield "nameprefix-foo-sp", b, b"Foo: bar\r\n " + v
    yield "nameprefix-foo-tab", b, b"Foo: bar\r\n\t" + v
    yield "tabprefix1", s, TE + b":\t" + CHUNKED
    yield "tabprefix2", s, TE + b"\t:\t" + CHUNKED
    yield "space1", s, TE + b" : " + CHUNKED
    yield "spacejoin1", s, b"Transfer Encoding: " + CHUNKED
    yield "underjoin1", s, b"Transfer_Encoding: " + CHUNKED
    yield "smashed", s, b"Transfer Encoding:" + CHUNKED
    yield "nospace1", b, TE + b":" + CHUNKED
    yield "valueprefix1", s, TE + b":  " + CHUNKED
    yield "vertprefix1", s, TE + b":\x0b" + CHUNKED
    yield "commaCow", s, v + b", cow"
    yield "cowComma", s, TE + b": cow, " + CHUNKED
    yield "commaIdentity", b, v + b", identity"
    yield "identityComma", b, TE + b": identity, " + CHUNKED
    yield "nested", s, TE + b": cow chunked bar"
    yield "nested-identity", b, TE + b": identity, chunked, identity"
    yield "contentEnc", s, b"Content-Encoding: " + CHUNKED
    yield "linewrapped1", s, TE + b":\n " + CHUNKED
    yield "linewrapped-crlf", b, TE + b":\r\n " + CHUNKED
    yield "doublewrapped", b, TE + b":\r\n \r\n " + CHUNKED
    yield "tabwrap", b, TE + b":\r\n\t" + CHUNKED
    yield "gareth1", b, TE + b"\n : " + CHUNKED
    yield "vertwrap", b, TE + b": \n\x0b" + CHUNKED
    yield "badsetupCR", b, b"Foo: bar\r" + v
    yield "badsetupLF", b, b"Foo: bar\n" + v
    yield "0dwrap", b, b"Foo: bar\r\n\r" + v
    yield "0dspam", s, b"Tra\rnsfer-Encoding: " + CHUNKED
    yield "badwrap", b, b"X-Blah-Ignore: \r\n " + v
    yield "quoted", s, TE + b': "chunked"'
    yield "aposed", s, TE + b": 'chunked'"
    yield "lazygrep", s, TE + b": chunk"
    yield "sarcasm", s, b"TrAnSFer-EnCODinG: cHuNkeD"
    yield "yelling", s, b"TRANSFER-ENCODING: CHUNKED"
    yield "multiCase", b, b"tRANSFER-ENCODING: " + CHUNKED
    yield "lowercase", b, b"transfer-encoding: " + CHUNKED
    yield "value-Chunked", b, TE + b": Chunked"
    yield "0dsuffix", s, v + b"\r"
    yield "tabsuffix", s, v + b"\t"
    yield "revdualchunk", s, TE + b": cow\r\n" + v
    yield "dualchunk", b, v + b"\r\nTransfer-encoding: identity"
    yield "dual-chunked", b, v + b"\r\n" + v
    yield "connection", b, b"Connection: " + TE + b"\r\n" + v
    yield "spjunk", b, TE + b" x: " + CHUNKED
    yield "backslash", b, b"Transfer\\Encoding: " + CHUNKED
    yield "spaceFF", s, TE + b":\xff" + CHUNKED
    yield "unispace", b, TE + b":\xa0" + CHUNKED
    yield "accentCH", s, TE + b": ch\x96nked"
    yield "accentTE", s, b"Transf\x82r-Encoding: " + CHUNKED
    yield "encode", b, b"Transfer-%45ncoding: " + CHUNKED
    yield "nel", b, TE + b"\x85: " + CHUNKED
    yield "nbsp", b, TE + b"\xa0: " + CHUNKED
    yield "shy", b, b"Transfer\xadEncoding: " + CHUNKED
    yield "shy2", b, TE + b"\xad: " + CHUNKED
    yield "qencode", b, TE + b": =?iso-8859-1?B?Y2h1bmtlZA==?="
    yield "qencodeutf", b, TE + b": =?UTF-8?B?Y2h1bmtlZA==?="
    yield "x-rout", s, b"X:X\r" + v
    yield "x-nout", s, b"X:X\n" + v
    yield "semicolon", b, v + b";"
    yield "comma-lead", "garden", TE + b": ,chunked"
    yield "comma-trail", b, v + b","
    yield "gzip-chunked", b, TE + b": gzip, " + CHUNKED
    yield "chunked-chunked", b, TE + b": chunked, chunked"
    yield "nul-suffix", "garden", v + b"\x00"
    yield "nbsp-both", "garden", TE + b": \xa0chunked\xa0"
    yield "ff-both", "garden", TE + b": \xffchunked\xff"
    yield "continued-name", "garden", b"Transfer-\r\nEncoding: " + CHUNKED
    yield "blegh", "garden", TE + b": blegh"
    yield "identity", b, TE + b": identity"
    yield "empty", b, TE + b":"


SPECIAL = (0x00, 0x09, 0x0B, 0x0C, 0x0D, 0x7F)  # DesyncBox.getSpecialChars()
DEFAULT_BYTES = (0x01, 0x04, 0x08, 0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x1F, 0x20, 0x7F, 0xA0, 0xFF)  # default.py
SWEEP_BYTES = tuple(range(0x00, 0x21)) + tuple(range(0x7F, 0x100))  # exhaustive.py (and 0x00, 0x20)
DOUBLE_BYTES = (0x00, 0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x20, 0x7F, 0x85, 0xA0, 0xFF)  # TE.CL doubles: a sample


def te_byte_sweep() -> Iterator[tuple[str, str, bytes]]:
    """One byte before the name, before the colon, in place of the space, after the value."""
    for i in SWEEP_BYTES:
        c = bytes([i])
        yield f"prespace-{i:02x}", "smuggler", c + TE + b": " + CHUNKED
        yield f"postspace-{i:02x}", "smuggler", TE + c + b": " + CHUNKED
        yield f"midspace-{i:02x}", "smuggler", TE + b":" + c + CHUNKED
        yield f"endspace-{i:02x}", "smuggler", TE + b": " + CHUNKED + c


def te_neighbours() -> Iterator[tuple[str, str, bytes]]:
    """default.py's bytes around a neighbouring header line (`X: X`), where a lax parser may see a line
    end (or none)."""
    v = TE + b": " + CHUNKED
    for i in DEFAULT_BYTES:
        c = bytes([i])
        yield f"xprespace-{i:02x}", "smuggler", b"X: X" + c + v
        yield f"endspacex-{i:02x}", "smuggler", v + c + b"X: X"
        yield f"rxprespace-{i:02x}", "smuggler", b"X: X\r" + c + v
        yield f"xnprespace-{i:02x}", "smuggler", b"X: X" + c + b"\n" + v
        yield f"endspacerx-{i:02x}", "smuggler", v + b"\r" + c + b"X: X"
        yield f"endspacexn-{i:02x}", "smuggler", v + c + b"\nX: X"


def te_doubles(values: tuple[int, ...]) -> Iterator[tuple[str, str, bytes]]:
    """doubles.py: the same byte in two of the four places."""
    for i in values:
        c = bytes([i])
        yield f"{i:02x}-{i:02x}-XX-XX", "smuggler", c + TE + c + b": " + CHUNKED
        yield f"{i:02x}-XX-{i:02x}-XX", "smuggler", c + TE + b":" + c + CHUNKED
        yield f"{i:02x}-XX-XX-{i:02x}", "smuggler", c + TE + b": " + CHUNKED + c
        yield f"XX-{i:02x}-{i:02x}-XX", "smuggler", TE + c + b":" + c + CHUNKED
        yield f"XX-{i:02x}-XX-{i:02x}", "smuggler", TE + c + b": " + CHUNKED + c
        yield f"XX-XX-{i:02x}-{i:02x}", "smuggler", TE + b":" + c + CHUNKED + c


def te_special() -> Iterator[tuple[str, str, bytes]]:
    """DesyncBox's special characters as spacefix1 / prefix1 / suffix1 / namesuffix1."""
    for i in SPECIAL:
        c = bytes([i])
        yield f"spacefix1-{i:02x}", "burp", TE + b":" + c + CHUNKED
        yield f"prefix1-{i:02x}", "burp", TE + b": " + c + CHUNKED
        yield f"suffix1-{i:02x}", "burp", TE + b": " + CHUNKED + c
        yield f"namesuffix1-{i:02x}", "burp", TE + c + b": " + CHUNKED


# -- Content-Length mutations ------------------------------------------------------------------------
def cl_variants(n: int) -> Iterator[tuple[str, str, list[bytes]]]:
    """(variant, source, header lines) stating a body of `n` bytes in a mutated way."""
    b, g, a = "burp", "garden", "audit"
    d = b"%d" % n
    yield "plus", b, [b"Content-Length: +" + d]
    yield "minus", b, [b"Content-Length: -" + d]
    yield "pad", b, [b"Content-Length: 0" + d]
    yield "bigpad", b, [b"Content-Length: 00000000000" + d]
    yield "spacepad", b, [b"Content-Length: 0 " + d]
    yield "e", b, [b"Content-Length: " + d + b"e0"]
    yield "dec", b, [b"Content-Length: " + d + b".0"]
    yield "commaprefix", b, [b"Content-Length: 0, " + d]
    yield "commasuffix", b, [b"Content-Length: " + d + b", 0"]
    yield "same-list", b, [b"Content-Length: " + d + b", " + d]
    yield "error", b, [b"X-Invalid Y: ", b"Content-Length: " + d]
    yield "expect", b, [b"Expect: 100-continue", b"Content-Length: " + d]
    yield "expect-obfs", b, [b"Expect: x 100-continue", b"Content-Length: " + d]
    yield "hex", a, [b"Content-Length: " + f"{n:x}".encode()]
    yield "0x", g, [b"Content-Length: 0x" + f"{n:x}".encode()]
    yield "underscore", g, [b"Content-Length: " + d[:1] + b"_" + d[1:]]
    yield "suffix-z", g, [b"Content-Length: " + d + b"Z"]
    yield "empty", g, [b"Content-Length: "]
    yield "empty-then", g, [b"Content-Length: ", b"Content-Length: " + d]
    yield "dup-0-n", g, [b"Content-Length: 0", b"Content-Length: " + d]
    yield "dup-n-0", g, [b"Content-Length: " + d, b"Content-Length: 0"]
    yield "dup-same", a, [b"Content-Length: " + d, b"Content-Length: " + d]
    yield "space-before-colon", g, [b"Content-Length : " + d]
    yield "tab-before-colon", g, [b"Content-Length\t: " + d]
    yield "nel-before-colon", g, [b"Content-Length\x85: " + d]
    yield "no-colon", g, [b"Content-Length " + d]
    yield "nul-suffix", g, [b"Content-Length: " + d + b"\x00"]
    yield "tab-value", a, [b"Content-Length:\t" + d + b"\t"]
    yield "folded", a, [b"Content-Length:", b" " + d]
    yield "negative-one", a, [b"Content-Length: -1"]
    yield "huge", a, [b"Content-Length: 99999999999999999999999"]
    yield "int64-overflow", a, [b"Content-Length: 18446744073709551617"]
    yield "connection-cl", a, [b"Connection: Content-Length", b"Content-Length: " + d]


def cl_probes() -> Iterator[Probe]:
    """Each Content-Length spelling with a whole request as the body: a hop that reads no body (or a
    different length) but forwards the header makes the origin read the hidden request as body, or
    the other way round."""
    body = smuggled()
    for variant, source, lines in cl_variants(len(body)):
        yield Probe(f"cl/{variant}", source, (request(b"POST", lines, body),))
    # A short stated length with a longer body: the rest must be parsed (and answered) by the proxy as a
    # request of its own, or refused; never passed on inside the first.
    short = b"x=1&y" + smuggled()
    for variant, source, lines in cl_variants(5):
        yield Probe(f"cl-short/{variant}", source, (request(b"POST", lines, short),))


def te_probes() -> Iterator[Probe]:
    named = list(te_named())
    for variant, source, gadget in named:
        yield Probe(f"clte/{variant}", source, (cl_te(gadget),))
        yield Probe(f"tecl/{variant}", source, (te_cl(gadget),))
        yield Probe(f"tete/{variant}", source, (te_te(gadget, first=False),))
        yield Probe(f"tete-first/{variant}", source, (te_te(gadget, first=True),))
    for variant, source, gadget in te_byte_sweep():
        yield Probe(f"clte-byte/{variant}", source, (cl_te(gadget),))
        yield Probe(f"tecl-byte/{variant}", source, (te_cl(gadget),))
    for variant, source, gadget in [*te_neighbours(), *te_special()]:
        yield Probe(f"clte/{variant}", source, (cl_te(gadget),))
        yield Probe(f"tecl/{variant}", source, (te_cl(gadget),))
    for variant, source, gadget in te_doubles(SWEEP_BYTES):
        yield Probe(f"clte-double/{variant}", source, (cl_te(gadget),))
    for variant, source, gadget in te_doubles(DOUBLE_BYTES):
        yield Probe(f"tecl-double/{variant}", source, (te_cl(gadget),))


# -- chunked body mutations ----------------------------------------------------------------------------
def chunk_probes() -> Iterator[Probe]:
    """Chunk-size lines and chunk framing (http-garden's chunk bugs, Burp's ChunkSizeScan shapes): after a
    bad size line the rest of the stream must not become a request."""
    te = b"Transfer-Encoding: chunked"
    rest = smuggled()
    g, a = "garden", "audit"
    cases: list[tuple[str, str, bytes]] = [
        ("size-underscore", g, b"0_2e\r\n\r\n" + rest),
        ("size-0x", g, b"0x0\r\n\r\n" + rest),
        ("size-plus", g, b"+0\r\n\r\n" + rest),
        ("size-minus-0x", g, b"-0x0\r\n\r\n" + rest),
        ("size-leading-space", g, b"           0\r\n\r\n" + rest),
        ("size-trailing-space", a, b"0 \r\n\r\n" + rest),
        ("size-trailing-tab", a, b"0\t\r\n\r\n" + rest),
        ("size-garbage-suffix", g, b"1these-bytes-never-get-validated\r\nZ\r\n0\r\n\r\n" + rest),
        ("size-empty", g, b"\r\n\r\n" + rest),
        ("size-invalid", g, b"INVALID!!!\r\n" + rest),
        ("size-z", g, b"Z\r\nZZ\r\nZZZ\r\n\r\n" + rest),
        ("size-overflow", a, b"10000000000000000\r\nA\r\n0\r\n\r\n" + rest),
        ("size-many-zeros", a, b"0000000000000000000000000000001\r\nA\r\n0\r\n\r\n" + rest),
        ("size-cr-ext", g, b"2\r\r;a\r\n02\r\n41\r\n0\r\n\r\n" + rest),
        ("size-cr-x", g, b"5\r\r;ABCD\r\n34\r\nE\r\n0\r\n\r\n" + rest),
        ("size-bare-lf", a, b"5\nhello\r\n0\r\n\r\n" + rest),
        ("data-bare-lf", g, b"a\r\n0123456789\n0\r\n\r\n" + rest),
        ("data-too-long", a, b"3\r\nhello\r\n0\r\n\r\n" + rest),
        ("data-too-short", a, b"9\r\nhello\r\n0\r\n\r\n" + rest),
        ("data-no-crlf", a, b"5\r\nhelloXX0\r\n\r\n" + rest),
        ("last-bare-lf", a, b"0\n\n" + rest),
        ("last-cr-only", a, b"0\r\r" + rest),
        ("ext-plain", a, b"5;name=value\r\nhello\r\n0\r\n\r\n" + rest),
        ("ext-quoted", a, b'5;name="v a l"\r\nhello\r\n0\r\n\r\n' + rest),
        ("ext-space-before-semicolon", a, b"5 ;a=b\r\nhello\r\n0\r\n\r\n" + rest),
        ("ext-bare-semicolon", a, b"5;\r\nhello\r\n0\r\n\r\n" + rest),
        ("ext-long", a, b"5;" + b"a" * 5000 + b"\r\nhello\r\n0\r\n\r\n" + rest),
        ("ext-nul", a, b"5;a\x00b\r\nhello\r\n0\r\n\r\n" + rest),
        ("ext-lf-in-quoted", a, b'5;a="\n"\r\nhello\r\n0\r\n\r\n' + rest),
        ("trailer-ok", a, b"5\r\nhello\r\n0\r\nX-Trailer: 1\r\n\r\n" + rest),
        ("trailer-te", a, b"5\r\nhello\r\n0\r\nTransfer-Encoding: chunked\r\n\r\n" + rest),
        ("trailer-cl", a, b"5\r\nhello\r\n0\r\nContent-Length: 500\r\n\r\n" + rest),
        ("trailer-fold", a, b"5\r\nhello\r\n0\r\nX: a\r\n b\r\n\r\n" + rest),
        ("trailer-no-colon", g, b"0\r\nX:POST / HTTP/1.1\r\n\r\n" + rest),
        ("trailer-bare-lf", a, b"0\r\nX: y\n\r\n" + rest),
        ("extra-crlf-before-last", g, b"17\r\n0\r\n\r\nGET / HTTP/1.1\r\n\r\n\r\n\r\n0\r\n\r\n" + rest),
        ("nul-after-last", g, b"0\r\n\r\n\x00" + rest),
    ]
    for variant, source, body in cases:
        yield Probe(f"chunk/{variant}", source, (request(b"POST", [te], body),))
    # http-garden transducer bug: a `0` line ended by `\r` alone then `0\n`.
    yield Probe("chunk/cr-zero-lf", "garden", (request(b"POST", [te], b"1\r0\n"),))


# -- http-garden head payloads -------------------------------------------------------------------------
def garden_probes() -> Iterator[Probe]:
    """TROPHIES.md head bugs, each followed by a hidden request where the bug would make one appear."""
    g = "garden"
    rest = smuggled()
    sm = b"GET " + SMUGGLED_PREFIX.encode() + TAG + b"?sleep=0.6 HTTP/1.1\r\nHost: " + HOST + b"\r\n"
    heads: list[tuple[str, bytes]] = [
        ("value-nul-cr", request(b"GET", [b"Header: v\x00\ralue"])),
        ("name-trailing-space-cl", request(b"GET", [b"Content-Length : %d" % len(rest)], rest)),
        ("first-name-tab-cl", b"GET /p/" + TAG + b" HTTP/1.1\r\n\tContent-Length: 1\r\nHost: " + HOST
         + b"\r\n\r\nX"),
        ("version-1.32", b"GET /p/" + TAG + b" HTTP/1.32\r\nHost: " + HOST + b"\r\n\r\n"),
        ("method-junk", b'G=":<>(e),[T];?" /p/' + TAG + b" HTTP/1.1\r\nHost: " + HOST + b"\r\n\r\n"),
        ("target-bang", b"GET ! HTTP/1.1\r\nHost: " + HOST + b"\r\nX-Probe: " + TAG + b"\r\n\r\n"),
        ("name-non-ascii", request(b"GET", [b"\xefoo: bar"])),
        ("lf-in-request-line", b"GET /p/" + TAG + b"\nHTTP/1.1\r\nHost: " + HOST + b"\r\n\r\n"),
        ("cl-plus-underscore", request(b"GET", [b"Content-Length: +1_0"], b"0123456789")),
        ("dual-te-chunked", request(b"POST", [b"Transfer-Encoding: chunked", b"Transfer-Encoding: chunked"],
                                    b"1\r\nZ\r\n0\r\n\r\n" + rest)),
        ("cr-line-end", request(b"GET", [b"Visible: :/\rSmuggled: :)"])),
        ("name-ctl-bytes", request(b"GET", [b"\x00\x01\x02\x03\x04\x05\x06\x07\x08\t\x0b\x0c\x0e\x0f\x10"
                                            b"\x11\x12\x13\x14\x15\x16\x17\x18\x19\x1a\x1b\x1c\x1d\x1e\x1f"
                                            b' "(),/;<=>?@[/]{}: whatever'])),
        ("version-cr", b"GET /p/" + TAG + b" HTTP/\r\r1.1\r\nHost: " + HOST + b"\r\n\r\n"),
        ("cl-empty", request(b"GET", [b"Content-Length: "]) + rest),
        ("te-empty-chunk", request(b"GET", [b"Transfer-Encoding: chunked"], b"\r\n\r\n" + rest)),
        ("empty-name", request(b"GET", [b": ignored"])),
        ("value-lf-lf", request(b"GET", [b"Useless:\n"]) + rest),
        ("cl-nel-name", request(b"GET", [b"Content-Length\x85: 10"], b"0123456789")),
        ("te-comma-cl", request(b"GET", [b"Transfer-Encoding: ,chunked", b"Content-Length: 5"],
                                b"0\r\n\r\n")),
        ("dual-cl-first", request(b"GET", [b"Content-Length: 1", b"Content-Length: 0"], b"Z")),
        ("version-overflow", b"GET /p/" + TAG + b" HTTP/4294967295.255\r\nHost: " + HOST + b"\r\n\r\n"),
        ("te-no-host", b"GET /p/" + TAG + b" HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
        ("cl-negative-48", request(b"GET", [b"Content-Length: -48"])),
        ("colon-only-line", request(b"GET", [b":", b"I: am chopped off"])),
        ("cl-no-colon", request(b"GET", [b"Content-Length 10"], b"0123456789")),
        ("cl-1z", request(b"GET", [b"Content-Length: 1Z"], b"Z")),
        ("head-cr-x", request(b"GET", [])[:-2] + b"\rZ" + sm + b"\r\n"),
        ("cl-octal", request(b"GET", [b"Content-Length: 010"], b"01234567")),
        ("dual-cl-last", request(b"GET", [b"Content-Length: 0", b"Content-Length: 1"], b"Z")),
        ("value-cr", request(b"GET", [b"Header: va\rlue"])),
        ("value-nul-then-close", request(b"GET", [b"Test: test\x00THESE BYTES GET DROPPED",
                                                  b"Connection: close"])),
        ("cl-empty-then-value", request(b"GET", [b"Content-Length: ", b"Content-Length: %d" % len(rest)],
                                        rest)),
        ("value-nul-end", request(b"GET", [b"Evil: evil\x00"])),
        ("close-then-invalid", request(b"GET", [b"Connection: close"]) + b"Invalid\r\n\r\n"),
        ("host-ff", request(b"POST", [b"Host: \xffa\xff", b"Transfer-Encoding: \xffchunked\xff"],
                            b"1\r\nZ\r\n0\r\n\r\n" + rest, host=False)),
        ("pipelined-cl0", request(b"POST", [b"Content-Length: 0", b"Connection: keep-alive"])
         + request(b"POST", [b"Content-Length: 34"]) + request(b"GET", [], target=b"/p/" + TAG + b"/2")),
        ("host-nul", b"GET /p/" + TAG + b" HTTP/1.1\r\nHost: google.com\x00.kallus.org\r\n\r\n"),
        ("name-lf-split", request(b"GET", [b"Te\nst: test", b"Connection: close"])),
        ("lf-only-head", b"GET /p/" + TAG + b" HTTP/1.1\nHost: " + HOST + b"\nConnection: close\n\n"),
        ("ctl-in-name-nul", request(b"GET", [b"a:b", b"c\x00"])),
        ("get-with-body", request(b"GET", [b"Content-Length: 10"], b"1234567890")),
        ("te-plus-cl", request(b"POST", [b"Content-Length: 5", b"Transfer-Encoding: chunked"], b"0\r\n\r\n")),
        ("dual-cl-evil", request(b"POST", [b"Content-Length: 0", b"Content-Length: %d" % len(rest)], rest)),
        ("user-nel-nbsp", request(b"GET", [b"User: \x85admin\xa0"])),
        ("te-unknown-coding", request(b"POST", [b"Transfer-Encoding: blegh"], b"1\r\nZ\r\n0\r\n\r\n" + rest)),
    ]
    for variant, data in heads:
        yield Probe(f"garden/{variant}", g, (data,))


# -- the audit cases -----------------------------------------------------------------------------------
def audit_probes() -> Iterator[Probe]:
    a = "audit"
    rest = smuggled()
    n = len(rest)
    # Headers named by Connection: the framing headers, Host and the forwarding headers must survive
    # (the body is still framed by them; dropping Content-Length would forward a bodiless request and
    # leave the body to be read as the next request).
    for variant, conn in (("cl", b"Content-Length"), ("keepalive-cl", b"keep-alive, content-length"),
                          ("CL-upper", b"CONTENT-LENGTH"), ("cl-close", b"close, Content-Length")):
        yield Probe(f"connection/{variant}", a,
                    (request(b"POST", [b"Connection: " + conn, b"Content-Length: %d" % n], rest),))
    yield Probe("connection/second-header-cl", a, (request(
        b"POST", [b"Connection: keep-alive", b"Connection: content-length", b"Content-Length: %d" % n],
        rest),))
    yield Probe("connection/te", a, (request(
        b"POST", [b"Connection: transfer-encoding", b"Transfer-Encoding: chunked"],
        chunk(b"hello") + LAST_CHUNK + rest),))
    yield Probe("connection/te-get", a, (request(
        b"GET", [b"Connection: transfer-encoding", b"Transfer-Encoding: chunked"],
        chunk(b"hello") + LAST_CHUNK),))
    for name, value in ((b"host", b""), (b"x-forwarded-for", b"X-Forwarded-For: 10.1.2.3"),
                        (b"x-request-id", b"X-Request-Id: client-id-1"),
                        (b"x-forwarded-proto", b"X-Forwarded-Proto: https"),
                        (b"x-forwarded-host", b"X-Forwarded-Host: fwd.test"),
                        (b"x-custom", b"X-Custom: gone")):
        lines = [b"Connection: " + name] + ([value] if value else [])
        yield Probe(f"connection/{name.decode()}", a, (request(b"GET", lines),))
        yield Probe(f"connection/{name.decode()}-with-body", a, (request(
            b"POST", [*lines, b"Content-Length: %d" % n], rest),))
    yield Probe("connection/all-protected", a, (request(
        b"POST", [b"Connection: content-length, transfer-encoding, host, x-forwarded-for, x-request-id",
                  b"X-Forwarded-For: 10.1.2.3", b"X-Request-Id: client-id-2", b"Content-Length: %d" % n],
        rest),))
    # Upgrade requests with a body that is a whole request.
    for variant, up in (("foo", b"foo"), ("websocket", b"websocket"), ("h2c", b"h2c"),
                        ("WebSocket-case", b"WebSocket"), ("tls", b"TLS/1.2")):
        lines = [b"Connection: Upgrade", b"Upgrade: " + up]
        if up == b"h2c":
            lines = [b"Connection: Upgrade, HTTP2-Settings", b"Upgrade: h2c",
                     b"HTTP2-Settings: AAMAAABkAAQAAP__"]
        yield Probe(f"upgrade/{variant}-cl", a, (request(b"GET", [*lines, b"Content-Length: %d" % n], rest),))
        yield Probe(f"upgrade/{variant}-chunked", a, (request(
            b"POST", [*lines, b"Transfer-Encoding: chunked"], chunk(rest) + LAST_CHUNK),))
        yield Probe(f"upgrade/{variant}-nobody", a, (request(b"GET", lines),))
        yield Probe(f"upgrade/{variant}-then-request", a, (request(b"GET", lines) + rest,))
    yield Probe("upgrade/foo-keepalive-token", a, (request(
        b"GET", [b"Connection: keep-alive, Upgrade", b"Upgrade: foo", b"Content-Length: %d" % n], rest),))
    yield Probe("upgrade/h2c-no-settings-cl", a, (request(
        b"POST", [b"Connection: Upgrade", b"Upgrade: h2c", b"Content-Length: %d" % n], rest),))
    yield Probe("upgrade/websocket-cl0", a, (request(
        b"GET", [b"Connection: Upgrade", b"Upgrade: websocket", b"Content-Length: 0"]),))
    yield Probe("upgrade/no-connection-token", a, (
        request(b"GET", [b"Upgrade: foo", b"Content-Length: %d" % n], rest),))
    yield Probe("upgrade/websocket-full", a, (request(b"GET", [
        b"Connection: Upgrade", b"Upgrade: websocket", b"Sec-WebSocket-Version: 13",
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==", b"Content-Length: %d" % n], rest),))
    # Host.
    for variant, lines in (
            ("duplicate", [b"Host: other.test"]),
            ("duplicate-same", [b"Host: " + HOST]),
            ("duplicate-empty", [b"Host: "]),
    ):
        yield Probe(f"host/{variant}", a, (request(b"GET", lines),))
    for variant, value in (("comma", b"a.test,b.test"), ("slash", b"a.test/evil"),
                           ("space", b"a.test b.test"), ("hash", b"a.test#x"), ("question", b"a.test?x"),
                           ("userinfo", b"user@a.test"),
                           ("userinfo-pass", b"user:pw@a.test"), ("backslash", b"a.test\\x"),
                           ("port-junk", b"a.test:80x"), ("empty", b""), ("brackets-bad", b"[zz]"),
                           ("ipv6", b"[::1]:80"), ("port", b"a.test:8080"), ("trailing-dot", b"a.test."),
                           ("percent", b"a%2etest"), ("underscore", b"a_b.test")):
        yield Probe(f"host/{variant}", a, (request(b"GET", [b"Host: " + value], host=False),))
    yield Probe("host/missing", a, (request(b"GET", [], host=False),))
    yield Probe("host/missing-http10", a, (request(b"GET", [], host=False, version=b"HTTP/1.0"),))
    # Request targets.
    tag = b"/p/" + TAG
    for variant, target in (
            ("absolute-query-no-path", b"http://evil.local?x=" + TAG),
            ("absolute", b"http://" + HOST + tag),
            ("absolute-https", b"https://" + HOST + tag),
            ("absolute-userinfo", b"http://a@b" + tag),
            ("absolute-ftp", b"ftp://x" + tag),
            ("absolute-upper-scheme", b"HTTP://X" + tag),
            ("absolute-fragment-authority", b"http://evil.local#" + TAG + b"/x"),
            ("absolute-no-authority", b"http:///p/" + TAG),
            ("fragment", tag + b"#frag"),
            ("fragment-query", tag + b"?a=1#frag?b=2"),
            ("fragment-smuggle-space", tag + b"#x%20HTTP/1.1"),
            ("dot-segments", b"/p/../p/" + TAG),
            ("encoded-slash", b"/p%2f" + TAG),
            ("asterisk-get", b"*"),
            ("no-slash", b"p/" + TAG),
            ("authority-form-get", b"desync.test:80"),
    ):
        yield Probe(f"target/{variant}", a, (request(b"GET", [], target=target),))
    # HTTP/1.0.
    yield Probe("http10/chunked", a, (request(b"POST", [b"Transfer-Encoding: chunked"],
                                              chunk(b"hello") + LAST_CHUNK, version=b"HTTP/1.0") + rest,))
    yield Probe("http10/chunked-keepalive", a, (request(
        b"POST", [b"Connection: keep-alive", b"Transfer-Encoding: chunked"], chunk(b"hello") + LAST_CHUNK,
        version=b"HTTP/1.0") + rest,))
    yield Probe("http10/cl-keepalive", a, (request(
        b"POST", [b"Connection: keep-alive", b"Content-Length: 5"], b"hello", version=b"HTTP/1.0"),))
    yield Probe("http10/plain", a, (request(b"GET", [], version=b"HTTP/1.0"),))
    yield Probe("http10/cl-te", a, (request(
        b"POST", [b"Content-Length: %d" % (5 + n), b"Transfer-Encoding: chunked"], LAST_CHUNK + rest,
        version=b"HTTP/1.0"),))
    # Content-Length spellings with the exact body.
    for variant, value in (("plus", b"+%d" % n), ("zeros", b"000%d" % n), ("hex", f"0x{n:x}".encode()),
                           ("negative", b"-%d" % n), ("huge", b"9" * 30), ("space-inside", b"%d %d" % (n, n)),
                           ("just-zero-then-body", b"0")):
        yield Probe(f"cl-spelling/{variant}", a, (request(b"POST", [b"Content-Length: " + value], rest),))
    # Expect: 100-continue with a body that is a request.
    yield Probe("expect/100-cl", a, (request(b"POST", [b"Expect: 100-continue", b"Content-Length: %d" % n],
                                             rest),))
    yield Probe("expect/100-chunked", a, (request(
        b"POST", [b"Expect: 100-continue", b"Transfer-Encoding: chunked"], chunk(rest) + LAST_CHUNK),))
    yield Probe("expect/100-head-then-body", a, (
        request(b"POST", [b"Expect: 100-continue", b"Content-Length: %d" % n]), rest))
    yield Probe("expect/100-no-body-then-request", a, (
        request(b"GET", [b"Expect: 100-continue"]) + rest,))
    yield Probe("expect/unknown", a, (
        request(b"POST", [b"Expect: 200-ok", b"Content-Length: %d" % n], rest),))
    # GET (and others) with a body.
    for method in (b"GET", b"HEAD-NOT", b"OPTIONS", b"DELETE", b"TRACE"):
        if method == b"HEAD-NOT":
            continue  # HEAD answers have no body: the client could not frame them, so none is sent
        yield Probe(f"method-body/{method.decode().lower()}-cl", a, (
            request(method, [b"Content-Length: %d" % n], rest),))
        yield Probe(f"method-body/{method.decode().lower()}-chunked", a, (
            request(method, [b"Transfer-Encoding: chunked"], chunk(rest) + LAST_CHUNK),))
    # Pipelining: two requests in one segment, answered in order.
    yield Probe("pipeline/two-gets", a, (request(b"GET", []) + request(b"GET", [], target=tag + b"/2"),))
    yield Probe("pipeline/post-then-get", a, (
        request(b"POST", [b"Content-Length: 5"], b"hello") + request(b"GET", [], target=tag + b"/2"),))
    yield Probe("pipeline/chunked-then-get", a, (
        request(b"POST", [b"Transfer-Encoding: chunked"], chunk(b"hello") + LAST_CHUNK)
        + request(b"GET", [], target=tag + b"/2"),))
    yield Probe("pipeline/three", a, (request(b"GET", []) + request(b"GET", [], target=tag + b"/2")
                                      + request(b"GET", [], target=tag + b"/3"),))
    yield Probe("pipeline/close-then-get", a, (request(b"GET", [b"Connection: close"]) + rest,))
    yield from split_probes()


def split_probes() -> Iterator[Probe]:
    """Requests split across TCP segments at the places a parser may mishandle: inside the request line,
    between CR and LF, inside a header name, between head and body, inside a chunk-size line, inside
    the terminating chunk."""
    a = "audit"
    post = request(b"POST", [b"Content-Length: 11", b"X-Split: yes"], b"hello world")
    chunked = request(b"POST", [b"Transfer-Encoding: chunked"],
                      chunk(b"hello") + chunk(b" world") + LAST_CHUNK)
    clte = cl_te(b"Transfer-Encoding: chunked")
    tecl = te_cl(b" Transfer-Encoding: chunked")

    def cut(data: bytes, *marks: bytes) -> tuple[bytes, ...]:
        parts, start = [], 0
        for m in marks:
            i = data.index(m, start)
            parts.append(data[start:i])
            start = i
        parts.append(data[start:])
        return tuple(p for p in parts if p)

    yield Probe("split/request-line", a, cut(post, b"ST /p", b"HTTP/1"))
    yield Probe("split/cr-lf", a, cut(post, b"\nHost", b"\nContent"))
    yield Probe("split/header-name", a, cut(post, b"ength: 11", b"plit"))
    yield Probe("split/head-body", a, cut(post, b"hello"))
    yield Probe("split/mid-body", a, cut(post, b"o world"))
    yield Probe("split/end-of-head", a, cut(post, b"\n\r\nhello", b"\r\nhello"))
    yield Probe("split/chunk-size", a, cut(chunked, b"\r\nhello", b" world"))
    yield Probe("split/chunk-last", a, cut(chunked, b"\r\n0\r\n", b"\n\r\n"))
    yield Probe("split/every-8", a, tuple(post[i:i + 8] for i in range(0, len(post), 8)))
    yield Probe("split/clte-at-smuggled", a, cut(clte, b"GET /SMUGGLED"))
    yield Probe("split/tecl-at-chunk", a, cut(tecl, b"GET /SMUGGLED", b"\r\n0\r\n"))
    yield Probe("split/fold-across", a, cut(request(b"GET", [b"X: a", b" b"]), b" b\r\n"))
    yield Probe("split/crlf-at-boundary", a, cut(post, b"\r\n\r\n"))
    yield Probe("split/pipeline", a, cut(post + request(b"GET", [], target=b"/p/" + TAG + b"/2"), b"GET /p"))


# -- the baseline ---------------------------------------------------------------------------------------
def baseline_probes() -> Iterator[Probe]:
    s = "baseline"
    yield Probe("baseline/get", s, (request(b"GET", []),))
    yield Probe("baseline/post-cl", s, (request(b"POST", [b"Content-Length: 5"], b"hello"),))
    yield Probe("baseline/post-chunked", s, (request(b"POST", [b"Transfer-Encoding: chunked"],
                                                     chunk(b"hello") + LAST_CHUNK),))
    yield Probe("baseline/post-cl-request-body", s, (
        request(b"POST", [b"Content-Length: %d" % len(smuggled())], smuggled()),))
    yield Probe("baseline/post-chunked-request-body", s, (request(
        b"POST", [b"Transfer-Encoding: chunked"], chunk(smuggled()) + LAST_CHUNK),))
    yield Probe("baseline/put-empty", s, (request(b"PUT", [b"Content-Length: 0"]),))
    yield Probe("baseline/close", s, (request(b"GET", [b"Connection: close"]),))


def corpus() -> list[Probe]:
    probes = [*baseline_probes(), *te_probes(), *cl_probes(), *chunk_probes(), *garden_probes(),
              *audit_probes()]
    names = [p.name for p in probes]
    dupes = {n for n in names if names.count(n) > 1}
    assert not dupes, f"duplicate probe names: {sorted(dupes)[:10]}"
    return probes


if __name__ == "__main__":  # a summary of the corpus: python tests/desync_corpus.py
    import collections

    all_probes = corpus()
    print(len(all_probes), "probes")
    for key, count in sorted(collections.Counter(p.source for p in all_probes).items()):
        print(f"  {key}: {count}")
    for key, count in sorted(collections.Counter(p.family() for p in all_probes).items()):
        print(f"  {key}: {count}")
