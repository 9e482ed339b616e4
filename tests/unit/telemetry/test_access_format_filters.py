"""Access-log filters (which requests get a line) and the logger that applies them and the formats:
a filtered-out request is never queued, the lines go where the log says (a file, stdout, stderr)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from test_access_format import Record

from meshpy.model.access_log import (
    ENVOY_TEXT,
    AndFilter,
    DurationFilter,
    HeaderFilter,
    LogFilter,
    LogFormat,
    NotHealthCheckFilter,
    OrFilter,
    ResponseFlagFilter,
    StatusFilter,
)
from meshpy.model.routes import HeaderMatch, StringMatch
from meshpy.telemetry.accesslog import AccessLogger
from meshpy.telemetry.accesslog_filter import compile_filter


def passes(flt: LogFilter, record: Record, seconds: float = 0.0) -> bool:
    return compile_filter(flt)(record, seconds)


@pytest.mark.parametrize(("op", "value", "logged"), [
    ("eq", 503, [503]), ("ne", 200, [0, 404, 503]), ("ge", 500, [503]), ("le", 404, [0, 200, 404]),
])
def test_status_code_filter(op: str, value: int, logged: list[int]) -> None:
    flt = StatusFilter(op=op, value=value)  # type: ignore[arg-type]
    assert [s for s in (0, 200, 404, 503) if passes(flt, Record(resp_status=s))] == logged


def test_duration_filter_compares_whole_milliseconds() -> None:
    flt = DurationFilter(op="ge", value=250)
    assert not passes(flt, Record(), 0.2499)
    assert passes(flt, Record(), 0.250)


def test_response_flag_filter() -> None:
    any_flag = ResponseFlagFilter()
    assert not passes(any_flag, Record(flag=""))
    assert passes(any_flag, Record(flag="DC"))
    some = ResponseFlagFilter(flags=("UF", "NR"))
    logged = [f for f in ("", "DC", "UF", "URX,UF", "NR") if passes(some, Record(flag=f))]
    assert logged == ["UF", "URX,UF", "NR"]


def test_header_filter_sees_the_request_as_forwarded() -> None:
    flt = HeaderFilter(header=HeaderMatch(name=":path", match=StringMatch(kind="prefix", value="/api")))
    record = Record()
    assert not passes(flt, record)
    record.request[":path"] = "/api/v1"
    assert passes(flt, record)
    absent = HeaderFilter(header=HeaderMatch(name="x-debug", match=StringMatch(kind="present"), invert=True))
    assert passes(absent, record)
    record.request["x-debug"] = "1"
    assert not passes(absent, record)


def test_and_or_and_not_health_check() -> None:
    # (Envoy's own example: errors, or slow requests that are not health checks)
    flt = OrFilter(filters=(StatusFilter(op="ge", value=500), AndFilter(filters=(
        DurationFilter(op="ge", value=1000), NotHealthCheckFilter()))))
    assert passes(flt, Record(resp_status=502))
    assert not passes(flt, Record(resp_status=200), 0.5)
    assert passes(flt, Record(resp_status=200), 1.5)


async def test_a_filtered_out_request_is_never_queued(tmp_path: Path) -> None:
    path = tmp_path / "errors.log"
    logger = AccessLogger(str(path), asyncio.get_running_loop(),
                          log_format=LogFormat(text="%RESPONSE_CODE%\n"),
                          log_filter=StatusFilter(op="ge", value=500))
    assert logger.needs_view
    for status in (200, 503, 404, 500):
        logger.log_http(Record(resp_status=status), 0.001)
    assert len(logger._pending) == 2
    await asyncio.sleep(0)  # the batch is written on the next loop iteration
    assert path.read_text() == "503\n500\n"
    assert logger.written == 2
    logger.close()


async def test_envoy_lines_to_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    logger = AccessLogger("/dev/stderr", asyncio.get_running_loop(), log_format=ENVOY_TEXT)
    logger.log_http(Record(), 0.0)
    logger.flush()
    out = capsys.readouterr()
    assert out.out == ""
    assert out.err.startswith('[2026-12-08T03:53:34.813Z] "GET /a?q=1 HTTP/1.1" 200 - 0 279 0 ')
    logger.close()


async def test_meshpy_json_needs_no_exchange_view(tmp_path: Path) -> None:
    logger = AccessLogger(str(tmp_path / "a.log"), asyncio.get_running_loop())
    assert not logger.needs_view  # the plain exchange serves it: no extra cost per request
    logger.close()


async def test_the_values_are_read_at_completion(tmp_path: Path) -> None:
    """The batch holds each line's values, not the requests: what changes after completion (a record
    let go and reused) is not what the line says."""
    path = tmp_path / "a.log"
    logger = AccessLogger(str(path), asyncio.get_running_loop(),
                          log_format=LogFormat(text="%RESPONSE_CODE% %REQ(USER-AGENT)% %START_TIME%\n"))
    record = Record()
    logger.log_http(record, 0.001)
    record.resp_status, record.request["user-agent"], record.wall0 = 500, "other", 0.0
    logger.close()
    assert path.read_text() == "200 probe/1.0 2026-12-08T03:53:34.813Z\n"


class Broken(Record):
    def log_protocol(self) -> str | None:
        raise RuntimeError("a bug in an operator")


async def test_a_line_that_cannot_be_made_is_counted_not_raised(tmp_path: Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "a.log"
    logger = AccessLogger(str(path), asyncio.get_running_loop(), log_format=LogFormat(text="%PROTOCOL%\n"))
    logger.log_http(Record(), 0.0)
    logger.log_http(Broken(), 0.0)  # (on the request path: nothing reaches the exchange)
    logger.log_http(Record(), 0.0)
    logger.close()
    assert path.read_text() == "HTTP/1.1\nHTTP/1.1\n"
    assert (logger.written, logger.dropped) == (2, 1)
    assert "a line could not be made" in caplog.text
