from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import pytest

from meshpy.telemetry.accesslog import AccessLogger, format_entry, rfc3339_ms

FIELDS = [
    "start_time",
    "method",
    "authority",
    "path",
    "protocol",
    "response_code",
    "response_flags",
    "bytes_received",
    "bytes_sent",
    "duration_ms",
    "upstream_host",
    "x_request_id",
    "downstream_remote_address",
]

T0 = 1700000000.25  # 2023-11-14T22:13:20.250Z


def http_entry(logger: AccessLogger, i: int = 0, **over: Any) -> None:
    args: dict[str, Any] = {
        "start_time": T0 + i,
        "method": "GET",
        "authority": "example.com",
        "path": f"/items/{i}?q=1",
        "protocol": "HTTP/1.1",
        "status": 200,
        "flags": "",
        "bytes_in": 10,
        "bytes_out": 1234,
        "duration_s": 0.0429,
        "upstream_host": "10.0.0.5:8080",
        "request_id": "9f1c2a7e-1234",
        "downstream_remote": "192.168.1.10:55122",
    }
    args.update(over)
    logger.log(**args)


def read_lines(path: Path) -> list[dict[str, Any]]:
    raw = path.read_bytes()
    assert raw.endswith(b"\n")
    return [json.loads(line) for line in raw.decode().splitlines()]


def test_rfc3339_ms() -> None:
    assert rfc3339_ms(T0) == "2023-11-14T22:13:20.250Z"
    assert rfc3339_ms(0.0) == "1970-01-01T00:00:00.000Z"
    assert rfc3339_ms(1700000000.9999) == "2023-11-14T22:13:20.999Z"


async def test_file_lines_are_json_with_envoy_fields(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    logger = AccessLogger(str(path), asyncio.get_running_loop())
    http_entry(logger, 0)
    http_entry(logger, 1, status=503, flags="UF", bytes_out=0, upstream_host="")
    logger.close()

    first, second = read_lines(path)
    assert list(first) == FIELDS
    assert first == {
        "start_time": "2023-11-14T22:13:20.250Z",
        "method": "GET",
        "authority": "example.com",
        "path": "/items/0?q=1",
        "protocol": "HTTP/1.1",
        "response_code": 200,
        "response_flags": "-",
        "bytes_received": 10,
        "bytes_sent": 1234,
        "duration_ms": 42,  # truncated, as Envoy's %DURATION%
        "upstream_host": "10.0.0.5:8080",
        "x_request_id": "9f1c2a7e-1234",
        "downstream_remote_address": "192.168.1.10:55122",
    }
    assert second["start_time"] == "2023-11-14T22:13:21.250Z"
    assert second["response_code"] == 503
    assert second["response_flags"] == "UF"
    assert second["upstream_host"] is None  # no value: null, as Envoy's JSON formatter


async def test_tcp_session_fields(tmp_path: Path) -> None:
    path = tmp_path / "tcp.log"
    logger = AccessLogger(str(path), asyncio.get_running_loop())
    http_entry(logger, method="", authority="", path="", protocol="-", status=0, request_id="")
    logger.close()
    (line,) = read_lines(path)
    assert line["method"] is None and line["path"] is None and line["authority"] is None
    assert line["x_request_id"] is None
    assert line["response_code"] == 0
    assert line["protocol"] == "-"


async def test_hostile_strings_stay_valid_json(tmp_path: Path) -> None:
    path = tmp_path / "a.log"
    logger = AccessLogger(str(path), asyncio.get_running_loop())
    nasty = 'a"b\\c\nd\te\x00f\u00e9\u2028\udcff'
    http_entry(logger, path=nasty, authority=nasty, request_id=nasty)
    logger.close()
    raw = path.read_bytes()
    assert raw.count(b"\n") == 1  # the newline in the value is escaped, the line is still one line
    (line,) = read_lines(path)
    assert line["path"] == nasty
    assert line["authority"] == nasty


async def test_batching_one_write_per_loop_iteration(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "batch.log"
    logger = AccessLogger(str(path), asyncio.get_running_loop())
    writes: list[bytes] = []
    real_write = logger._write

    def spy(data: bytes) -> None:
        writes.append(data)
        real_write(data)

    # A slotted object takes no instance attribute: wrap the method on the class.
    monkeypatch.setattr(AccessLogger, "_write", lambda self, data: spy(data))

    for i in range(100):
        http_entry(logger, i)
    assert writes == []  # nothing written on the request path
    assert path.read_bytes() == b""
    await asyncio.sleep(0)  # one loop iteration: the scheduled flush runs
    assert len(writes) == 1
    assert len(read_lines(path)) == 100
    assert logger.written == 100

    http_entry(logger, 100)
    await asyncio.sleep(0)
    assert len(writes) == 2
    logger.close()
    assert len(read_lines(path)) == 101


async def test_flushes_early_when_batch_is_full(tmp_path: Path) -> None:
    path = tmp_path / "full.log"
    logger = AccessLogger(str(path), asyncio.get_running_loop(), max_pending=10)
    for i in range(25):
        http_entry(logger, i)
    assert len(read_lines(path)) == 20  # two full batches, written without waiting for the loop
    await asyncio.sleep(0)
    assert len(read_lines(path)) == 25
    logger.close()


async def test_appends_to_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "keep.log"
    path.write_text('{"old": true}\n')
    logger = AccessLogger(str(path), asyncio.get_running_loop())
    http_entry(logger)
    logger.close()
    lines = read_lines(path)
    assert lines[0] == {"old": True}
    assert len(lines) == 2


async def test_unopenable_path_raises_oserror(tmp_path: Path) -> None:
    loop = asyncio.get_running_loop()
    with pytest.raises(OSError):
        AccessLogger(str(tmp_path / "missing-dir" / "a.log"), loop)
    with pytest.raises(OSError):
        AccessLogger(str(tmp_path), loop)  # a directory


async def test_reopen_after_rotation(tmp_path: Path) -> None:
    path = tmp_path / "rot.log"
    logger = AccessLogger(str(path), asyncio.get_running_loop())
    http_entry(logger, 0)
    os.rename(path, tmp_path / "rot.log.1")  # what logrotate does
    http_entry(logger, 1)  # still queued: goes to the old file on reopen
    logger.reopen()
    http_entry(logger, 2)
    logger.close()
    assert [e["path"] for e in read_lines(tmp_path / "rot.log.1")] == ["/items/0?q=1", "/items/1?q=1"]
    assert [e["path"] for e in read_lines(path)] == ["/items/2?q=1"]


async def test_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    for spelling in (None, "-", "stdout"):
        logger = AccessLogger(spelling, asyncio.get_running_loop())
        http_entry(logger)
        await asyncio.sleep(0)
        logger.close()
        out = capsys.readouterr().out
        assert list(json.loads(out)) == FIELDS


async def test_write_errors_are_counted_not_raised(tmp_path: Path) -> None:
    path = tmp_path / "closed.log"
    logger = AccessLogger(str(path), asyncio.get_running_loop())
    logger.close()
    http_entry(logger)  # after close: dropped, not an exception on the request path
    logger.flush()
    assert logger.dropped == 1
    assert logger.written == 0


def test_format_entry_matches_json_dumps_semantics() -> None:
    entry = (T0, "POST", "h", "/p", "HTTP/1.1", 201, "-", 1, 2, 1.5, "u:1", "rid", "r:2", None)
    line = format_entry(entry)
    assert line.endswith("\n")
    assert json.loads(line)["duration_ms"] == 1500


TLS_FIELDS = ["downstream_tls_version", "downstream_tls_cipher", "requested_server_name",
              "downstream_tls_alpn", "downstream_peer_uri_san", "downstream_peer_subject"]


def test_a_tls_connection_says_what_its_handshake_agreed() -> None:
    from meshpy.ports import TlsInfo

    mtls = TlsInfo(version="TLSv1.3", cipher="TLS_AES_256_GCM_SHA384", sni="a.example.com", alpn="h2",
                   peer_uris=("spiffe://a/orders", "spiffe://a/alias"), peer_subject="CN=orders",
                   peer_certificate=b"0")
    base = (T0, "GET", "h", "/p", "HTTP/2", 200, "", 1, 2, 0.5, "u:1", "rid", "r:2")
    line = json.loads(format_entry((*base, mtls)))
    assert list(line) == FIELDS + TLS_FIELDS
    assert [line[k] for k in TLS_FIELDS] == ["TLSv1.3", "TLS_AES_256_GCM_SHA384", "a.example.com", "h2",
                                             "spiffe://a/orders,spiffe://a/alias", "CN=orders"]
    one_way = TlsInfo(version="TLSv1.2", cipher="ECDHE-ECDSA-AES128-GCM-SHA256", sni="", alpn="")
    line = json.loads(format_entry((*base, one_way)))
    expected = ["TLSv1.2", "ECDHE-ECDSA-AES128-GCM-SHA256", None, None, None, None]
    assert [line[k] for k in TLS_FIELDS] == expected
    assert list(json.loads(format_entry((*base, None)))) == FIELDS  # plaintext: the line as it was
