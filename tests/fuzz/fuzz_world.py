"""The end-to-end harnesses' world: meshpy's App in this process on 127.0.0.1 (one listener, HTTP/1.1
and HTTP/2 on one port), a well-behaved origin and a scripted one that answers with fuzzed bytes, and a
client that sends an input over a real socket and reads what comes back until the proxy closes.

In process rather than as a subprocess so that atheris sees the proxy's coverage; the loop runs for one
input at a time inside the fuzzer's callback. What would crash or silently break the proxy is caught
three ways: the loop's exception handler (an exception out of a protocol callback), the log (ERROR and
above), and wrappers on Http1Downstream's parser callbacks, since the downstream answers any exception
raised in one with a plain 400 and the bug behind it would go unseen.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import traceback
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import httptools
from fuzzkit import Finding

from meshpy.app import App
from meshpy.errors import BadRequest
from meshpy.model.load import load_text
from meshpy.transport import downstream_http1

OK_PATH = b"/__fuzz_ok"
HOST = b"fuzz.test"


def _config(upstream: int, scripted: int) -> str:
    return f"""
drain_time: 0s
listeners:
  - name: web
    address: 127.0.0.1:0
    upgrades: [websocket, connect]
    request_headers_timeout: 2s
    stream_idle_timeout: 2s
    max_request_body: 64KiB
    routes:
      - {{match: {{connect: true}}, cluster: good}}
      - {{match: /resp, cluster: scripted, timeout: 1s}}
      - {{match: /direct, direct: {{status: 200, body: "direct"}}}}
      - {{match: /, cluster: good, timeout: 1s}}
clusters:
  - name: good
    endpoints: [127.0.0.1:{upstream}]
  - name: scripted
    endpoints: [127.0.0.1:{scripted}]
"""


class Origin(asyncio.Protocol):
    """An HTTP/1.1 origin: 200 `ok` to every request it parses; 101 to a WebSocket upgrade, then echo.
    `script` set: the bytes of the answer to the first request, in segments, then close."""

    def __init__(self, script: list[bytes] | None) -> None:
        self.script = script
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.echo = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        if self.echo:
            self.transport.write(data)
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.echo = True
            self.transport.write(b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n"
                                 b"connection: upgrade\r\n\r\n")
        except httptools.HttpParserError:
            self.transport.close()

    def on_message_complete(self) -> None:
        assert self.transport is not None
        if self.script is None:
            self.transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            return
        for part in self.script:
            self.transport.write(part)
        self.transport.close()

    def eof_received(self) -> bool | None:
        return None


class World:
    def __init__(self) -> None:
        factory = os.environ.get("FUZZ_LOOP", "uvloop")
        if factory == "uvloop":
            import uvloop

            self.loop = uvloop.new_event_loop()
        else:
            self.loop = asyncio.new_event_loop()
        self.errors: list[str] = []
        self.script: list[bytes] = [b""]
        self.port = 0
        self.app: App | None = None
        self._servers: list[asyncio.AbstractServer] = []

    # -- errors seen while an input ran -------------------------------------------------------------
    def _exception(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        where = "".join(traceback.format_exception(exc)[-6:]) if exc is not None else ""
        self.errors.append(f"{context.get('message')}: {exc!r}\n{where}")

    def note(self, text: str) -> None:
        self.errors.append(text)

    # -- setup ----------------------------------------------------------------------------------------
    async def _start(self) -> None:
        loop = asyncio.get_running_loop()
        good = await loop.create_server(lambda: Origin(None), "127.0.0.1", 0)
        scripted = await loop.create_server(lambda: Origin(self.script), "127.0.0.1", 0)
        self._servers = [good, scripted]
        ports = [s.sockets[0].getsockname()[1] for s in self._servers]
        self.app = App(loop, drain_time=0.0, grace_time=0.2)
        await self.app.apply(load_text(_config(*ports)))
        self.port = self.app.bound_port("web")

    async def _stop(self) -> None:
        assert self.app is not None
        self.app.shutdown(drain=False)
        await self.app.wait_stopped()
        for s in self._servers:
            s.close()

    def run(self, coro: Any, timeout: float) -> Any:
        return self.loop.run_until_complete(asyncio.wait_for(coro, timeout))

    # -- one exchange over a socket -------------------------------------------------------------------
    async def converse(self, parts: list[bytes], timeout: float, quiet: float = 0.0) -> bytes:
        """Send `parts` (one write each, the loop turned between them), wait `quiet` seconds of
        silence, half-close, and read until the proxy closes. Finding if it does not within `timeout`."""
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        got = bytearray()
        try:
            for part in parts:
                if writer.is_closing() or reader.at_eof():
                    break  # the proxy has closed (a 400 with Connection: close): the rest is not read
                with contextlib.suppress(OSError, RuntimeError):
                    writer.write(part)
                await asyncio.sleep(0)
            if quiet:
                with contextlib.suppress(asyncio.TimeoutError, OSError):
                    while chunk := await asyncio.wait_for(reader.read(65536), quiet):
                        got += chunk
            with contextlib.suppress(OSError, RuntimeError):
                if writer.can_write_eof():
                    writer.write_eof()
            try:
                async with asyncio.timeout(timeout):
                    while chunk := await reader.read(65536):
                        got += chunk
            except TimeoutError:  # (first: in 3.11 TimeoutError is an OSError)
                raise Finding(f"hang: the proxy kept the connection {timeout}s after the client's EOF; "
                              f"got {bytes(got[:300])!r}") from None
            except OSError:
                pass  # a reset instead of a close: an answer all the same
        finally:
            writer.close()
        return bytes(got)

    async def healthy(self) -> None:
        """A plain request on a new connection still gets the origin's 200, and nothing leaked."""
        got = await self.converse([b"GET " + OK_PATH + b" HTTP/1.1\r\nhost: " + HOST + b"\r\n\r\n"], 3.0)
        if not got.startswith(b"HTTP/1.1 200 OK\r\n") or not got.endswith(b"\r\n\r\nok"):
            raise Finding(f"unhealthy: a plain request after the input got {got[:300]!r}")
        assert self.app is not None
        slot = self.app.listeners["web"].slot
        stats = slot.current.stats
        for _ in range(100):  # connections close in a callback or two after the client's socket
            if not slot.connections:
                break
            await asyncio.sleep(0.01)
        for _ in range(3):  # what a connection's end sets off (exchanges completing) runs soon after
            await asyncio.sleep(0)
        active = stats.rq_active
        stats.rq_active = 0  # each input is judged on its own
        if slot.connections:
            raise Finding(f"leak: {len(slot.connections)} connections open after every client left")
        if active:
            raise Finding(f"request gauge off: rq_active {active} after every client left")

    def clean(self) -> None:
        """Abort what a previous input that failed left behind (its finding is reported already), so
        that each input is judged on its own: without this the next input's leak check would fail."""
        assert self.app is not None
        slot = self.app.listeners["web"].slot
        if slot.connections:
            for conn in list(slot.connections):
                transport = getattr(conn, "transport", None)
                if transport is not None:
                    transport.abort()
            self.run(asyncio.sleep(0.01), 1.0)
        slot.current.stats.rq_active = 0
        self.errors.clear()

    def check_errors(self) -> None:
        if self.errors:
            errors, self.errors = self.errors, []
            raise Finding("proxy error: " + " | ".join(errors)[:2000])


class _LogCatcher(logging.Handler):
    def __init__(self, world: World) -> None:
        super().__init__(logging.ERROR)
        self.world = world

    def emit(self, record: logging.LogRecord) -> None:
        exc = record.exc_info[1] if record.exc_info else None
        self.world.note(f"log {record.name}: {record.getMessage()} {exc!r}")


def _surface(world: World, name: str) -> Callable[..., Any]:
    original = getattr(downstream_http1.Http1Downstream, name)

    def wrapper(self: Any, *args: Any) -> Any:
        try:
            return original(self, *args)
        except BadRequest:
            raise
        except Exception as exc:
            world.note(f"{name} raised {exc!r} (answered as a plain 400)")
            raise

    return wrapper


@contextlib.contextmanager
def world() -> Iterator[World]:
    w = World()
    catcher = _LogCatcher(w)
    logging.getLogger().addHandler(catcher)
    w.loop.set_exception_handler(w._exception)
    patched = {}
    for name in ("on_url", "on_header", "on_headers_complete", "on_body", "on_message_complete"):
        patched[name] = getattr(downstream_http1.Http1Downstream, name)
        setattr(downstream_http1.Http1Downstream, name, _surface(w, name))
    try:
        w.run(w._start(), 20)
        w.check_errors()
        yield w
    finally:
        with contextlib.suppress(Exception):
            w.run(w._stop(), 10)
        for name, fn in patched.items():
            setattr(downstream_http1.Http1Downstream, name, fn)
        logging.getLogger().removeHandler(catcher)
        # A transport still open after the App's shutdown (a stuck exchange a finding left behind):
        # uvloop's close() warns of it while it walks its handles, and where warnings are errors (as in
        # pytest) the warning breaks that walk and close() never returns. Closing it is all that's left.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            w.loop.close()


_CURRENT: list[World] = []


@contextlib.contextmanager
def shared_world() -> Iterator[World]:
    """The world the end-to-end targets' `run` uses (entered through Target.context)."""
    with world() as w:
        _CURRENT.append(w)
        try:
            yield w
        finally:
            _CURRENT.remove(w)


def current() -> World:
    if not _CURRENT:
        raise RuntimeError("no fuzz world: enter Target.context first")
    return _CURRENT[-1]
