"""Rebuild the committed seed corpus (tests/fuzz/corpus/<target>/) from the project's own test inputs:
the desync probe corpus, hand-written requests, responses and HTTP/2 frame sequences, config/*.yaml,
the config/control resources, the YAML strings of the unit and integration tests, and every loadable
meshpy config exported to xDS resources (control.sources.export), and TLS ClientHellos made by the ssl
module (fuzz_tls_hello.seeds). Regression inputs (`regress-*`) are kept as they are.

    .venv/bin/python tests/fuzz/make_corpus.py

Deterministic: the same tree gives the same files, so a rebuild shows up in git only when inputs change.
"""

from __future__ import annotations

import ast
import contextlib
import json
import sys
from collections.abc import Iterable
from pathlib import Path

HERE = Path(__file__).resolve().parent
TESTS = HERE.parent
ROOT = TESTS.parent
sys.path[:0] = [str(HERE), str(TESTS), str(ROOT)]

import desync_corpus  # noqa: E402
import h2frames as f  # noqa: E402
import yaml  # noqa: E402
from fuzzkit import CORPUS, input_name  # noqa: E402
from google.protobuf import text_format  # noqa: E402

SEG = b"|SEG|"
MAX_SEED = 16 * 1024


def write(target: str, inputs: Iterable[bytes]) -> int:
    d = CORPUS / target
    d.mkdir(parents=True, exist_ok=True)
    for old in d.iterdir():
        if not old.name.startswith("regress-"):
            old.unlink()
    n = 0
    for data in dict.fromkeys(inputs):  # in order, without repeats
        if data and len(data) <= MAX_SEED:
            (d / input_name(data)).write_bytes(data)
            n += 1
    return n


def http1_requests() -> list[bytes]:
    """Every family of the desync corpus (its first probes), then hand-written shapes."""
    seen: dict[str, int] = {}
    out = []
    for i, probe in enumerate(desync_corpus.corpus()):
        fam = probe.family()
        seen[fam] = seen.get(fam, 0) + 1
        if seen[fam] <= 4 or i % 40 == 0:
            out.append(SEG.join(probe.wire(i % 10000)))
    h = b"Host: a.test\r\n"
    out += [
        b"GET / HTTP/1.1\r\n" + h + b"\r\n",
        b"GET / HTTP/1.1\r\n" + h + b"\r\nGET /2 HTTP/1.1\r\n" + h + b"Connection: close\r\n\r\n",
        b"POST /p HTTP/1.1\r\n" + h + b"Content-Length: 5\r\n\r\nhello",
        b"POST /p HTTP/1.1\r\n" + h + b"Transfer-Encoding: chunked\r\n\r\n"
        b"5;x=y\r\nhello\r\n0\r\nT: v\r\n\r\n",
        b"POST /p HTTP/1.1\r\n" + h + b"Expect: 100-continue\r\nContent-Length: 2\r\n\r\n" + SEG + b"ok",
        b"GET http://a.test:8080/x?y HTTP/1.1\r\n" + h + b"\r\n",
        b"CONNECT b.test:443 HTTP/1.1\r\nHost: b.test:443\r\n\r\n" + SEG + b"\x16\x03\x01tunnel",
        b"GET /ws HTTP/1.1\r\n" + h + b"Connection: Upgrade\r\nUpgrade: websocket\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        + SEG + b"\x81\x00",
        b"POST /h2c HTTP/1.1\r\n" + h + b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
        b"HTTP2-Settings: AAMAAABkAAQAAP__\r\nContent-Length: 3\r\n\r\nabcGET /n HTTP/1.1\r\n" + h + b"\r\n",
        b"GET / HTTP/1.0\r\n\r\n",
        b"OPTIONS * HTTP/1.1\r\n" + h + b"\r\n",
        b"HEAD /h HTTP/1.1\r\n" + h + b"Connection: keep-alive, x-drop\r\nX-Drop: 1\r\nTE: trailers\r\n\r\n",
        b"GET /resp HTTP/1.1\r\n" + h + b"X-Forwarded-For: 1.2.3.4\r\nX-Request-Id: r1\r\n\r\n",
        b"GET /direct HTTP/1.1\r\nHost: [::1]:80\r\n\r\n",
        b"GET / HTTP/1.1\r\n" + h + b"X: " + b"v" * 2000 + b"\r\n\r\n",
        b"GET /slow HTTP/1.1\r\nHo" + SEG + b"st: a.test\r\n" + SEG + b"\r\n",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    ]
    return out


def http1_responses() -> list[bytes]:
    return [
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
        b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\nDate: x\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: t\r\n\r\n5\r\nhello\r\n0\r\nT: 1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n\r\nclose-delimited body",
        b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 304 Not Modified\r\nETag: x\r\n\r\n",
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 103 Early Hints\r\nLink: </s>; rel=preload\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx",
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n\x81\x00",
        b"HTTP/1.1 200 OK\r\nConnection: x-secret, keep-alive\r\nX-Secret: 1\r\nKeep-Alive: timeout=5\r\n"
        b"Content-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX-Fold: a\r\n b\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nUpgrade: h2c\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-" + SEG + b"Length: 2\r\n\r" + SEG + b"\nok",
        b"HTTP/1.1 200 OK\r\nX: " + b"v" * 3000 + b"\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 999 Whatever\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n",
        b"garbage\r\n\r\n",
    ]


def http2_frames() -> list[bytes]:
    s = f.settings()
    ack = f.settings(ack=True)
    get = f.block(f.request())
    post = f.block(f.request(method=b"POST", extra=[(b"content-length", b"5")]))
    grpc = f.block(f.request(method=b"POST", path=b"/svc/M", extra=[(b"content-type", b"application/grpc"),
                                                                    (b"te", b"trailers")]))
    out = [
        s + f.headers(1, get, end_stream=True),
        s + ack + f.headers(1, get, end_stream=True) + f.headers(3, get, end_stream=True),
        s + f.headers(1, post) + f.data(1, b"hello", end_stream=True),
        s + f.headers(1, post) + f.data(1, b"hel") + SEG + f.data(1, b"lo", end_stream=True),
        s + f.headers(1, grpc) + f.data(1, b"\x00\x00\x00\x00\x00") + f.headers(1, f.block([(b"x", b"1")]),
                                                                               end_stream=True),
        s + f.headers(1, get[:10], end_headers=False) + f.continuation(1, get[10:])
        + f.data(1, b"", end_stream=True),
        s + f.headers(1, get) + f.rst_stream(1),
        s + f.headers(1, f.block(f.request(method=b"CONNECT", extra=[(b":protocol", b"websocket")]))),
        s + f.headers(1, f.block([(b":method", b"CONNECT"), (b":authority", b"b.test:443")]))
        + f.data(1, b"tun"),
        s + f.headers(1, f.block(f.request(extra=[(b"cookie", b"a=1"), (b"cookie", b"b=2")])),
                      end_stream=True),
        s + f.headers(1, f.block(f.request(path=b"/resp")), end_stream=True),
        s + f.frame(6, 0, 0, b"12345678") + f.frame(8, 0, 0, (1 << 20).to_bytes(4, "big")),
        s + f.frame(2, 0, 1, b"\x00\x00\x00\x00\x10") + f.headers(1, get, end_stream=True),
        s + f.frame(7, 0, 0, b"\x00\x00\x00\x00\x00\x00\x00\x00"),
        f.settings({4: 0, 1: 0, 5: 16384}) + f.headers(1, post) + f.data(1, b"x" * 100, end_stream=True),
        s + f.headers(1, f.block(f.request(extra=[(b"Upper", b"x")])), end_stream=True),
        s + f.headers(1, f.block(f.request(extra=[(b"connection", b"close")])), end_stream=True),
        s + f.headers(1, post) + f.data(1, b"toolong!", end_stream=True),
        s + f.headers(2, get, end_stream=True),
        s + f.frame(0xFF, 0, 0, b"unknown") + f.headers(1, get, end_stream=True),
    ]
    return out


def _string_literals(path: Path) -> list[str]:
    try:
        tree = ast.parse(path.read_text())
    except (SyntaxError, UnicodeDecodeError):
        return []
    return [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)
            and "\n" in n.value and ":" in n.value]


def _fill(text: str) -> str:
    """Test templates name ports and such in braces: any port will do for a seed."""
    for key in ("port", "admin", "web", "tcp", "upstream", "up", "other", "backend", "demo", "xds"):
        text = text.replace("{" + key + "}", "18080")
    return text.replace("{{", "{").replace("}}", "}")


def configs() -> tuple[list[bytes], list[bytes], list[object]]:
    """(meshpy YAML seeds, bootstrap seeds, loaded meshpy configs for the xDS export)."""
    from meshpy.model.load import detect_format, load_text

    texts = [p.read_text() for p in sorted((ROOT / "config").glob("*.yaml"))]
    for p in sorted(TESTS.rglob("*.py")):
        if "fuzz" not in p.parts:
            texts += [_fill(t) for t in _string_literals(p)]
    meshpy, envoy, loaded = [], [], []
    for text in texts:
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError:
            continue
        if not isinstance(data, dict) or ("{" in text and "}" not in text):
            continue
        if not ({"listeners", "clusters", "static_resources", "admin"} & data.keys()):
            continue
        kind = detect_format(data)
        (envoy if kind == "envoy" else meshpy).append(text.encode())
        if kind == "meshpy":
            with contextlib.suppress(Exception):
                loaded.append(load_text(text))
    return meshpy[:160], envoy, loaded


def xds_resources(loaded: list[object]) -> list[bytes]:
    from fuzz_xds import TYPES

    from control.sources.envoy_dir import load_envoy_dir
    from control.sources.export import export

    kinds = {v: k for k, v in TYPES.items()}
    out = []
    for by_type in [load_envoy_dir(ROOT / "config" / "control"), *(_export(export, c) for c in loaded)]:
        for type_url, items in by_type.items():
            for msg in items.values():
                out.append(f"{kinds[type_url]}\n".encode() + text_format.MessageToString(msg).encode())
    return out[:200]


def bootstraps(envoy: list[bytes], loaded: list[object]) -> list[bytes]:
    """The bootstrap seeds of the tests, then each exportable meshpy config as a static bootstrap."""
    from control.sources.export import export
    from control.sources.export_static import static_bootstrap

    out = list(envoy)
    for config in loaded:
        resources = _export(export, config)
        if resources:
            plain = json.loads(json.dumps(static_bootstrap(resources, ("127.0.0.1", 9901))))  # no OrderedDict
            out.append(yaml.safe_dump(plain, sort_keys=False).encode())
    return out[:80]


def _export(export: object, config: object) -> dict[str, dict[str, object]]:
    try:
        return export(config)  # type: ignore[operator, no-any-return]
    except Exception:
        return {}


def tls_hellos() -> list[bytes]:
    from fuzz_tls_hello import seeds

    return seeds()


def main() -> None:
    meshpy, envoy, loaded = configs()
    counts = {
        "http1_request": write("http1_request", http1_requests()),
        "http1_response": write("http1_response", http1_responses()),
        "http2": write("http2", http2_frames()),
        "meshpy_yaml": write("meshpy_yaml", meshpy),
        "bootstrap": write("bootstrap", bootstraps(envoy, loaded)),
        "xds": write("xds", xds_resources(loaded)),
        "tls_hello": write("tls_hello", tls_hellos()),
    }
    for target, n in counts.items():
        print(f"{target}: {n} seeds")


if __name__ == "__main__":
    main()
