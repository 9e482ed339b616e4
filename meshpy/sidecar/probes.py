"""The sidecar's probe port: the app's kubelet probes, made from inside the pod.

`meshpy inject` points each httpGet, tcpSocket and grpc probe of the app at this port
(`/app-health/<container>/<livez|readyz|startupz>`) and gives the proxy the originals as JSON
(MESHPY_APP_PROBES, see inject_probes). A GET of such a path makes the original check of the app on
127.0.0.1, as the kubelet would have made it of the pod, and answers with what it found: the app's own
status for an httpGet (the kubelet counts 200-399 as success, as it would have), else 200 or 503. Any other
path is 404; nothing else is served here (no admin, no config): the port is reachable from the whole
cluster, outside the mesh's mutual TLS, as Istio's is.

The checks leave the proxy's UID, which `meshpy iptables` never captures (and 127.0.0.1 is never
captured for any UID): they reach the app directly, not the outbound listener.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import ssl
from dataclasses import dataclass
from urllib.parse import quote

from meshpy.codec.h2session import SessionError, StreamGone
from meshpy.codec.http1 import no_body_status, reason_phrase
from meshpy.model.types import Address
from meshpy.model.yaml_values import parse_address
from meshpy.sidecar.inject_probes import DEFAULT_TIMEOUT, HANDLERS, PATH_PREFIX
from meshpy.upstream.health import grpc_health

log = logging.getLogger("meshpy.probes")

APP_HOST = "127.0.0.1"
MAX_HEAD = 8 * 1024  # a kubelet's request is a few hundred bytes
READ_TIMEOUT = 10.0  # for the request itself: a connection that sends nothing is not kept
# Apps often leave the kubelet's probes out of their logs by this prefix.
USER_AGENT = "kube-probe/meshpy"
_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_FAILED = (OSError, TimeoutError, ValueError, asyncio.IncompleteReadError, SessionError, StreamGone)


@dataclass(frozen=True, slots=True)
class AppProbe:
    """One original probe: `kind` is its handler (httpGet, tcpSocket or grpc)."""

    kind: str
    port: int
    timeout: float = DEFAULT_TIMEOUT
    path: str = "/"  # httpGet: the request target, query included
    https: bool = False  # httpGet with scheme HTTPS: TLS, the app's certificate not checked (as the kubelet)
    headers: tuple[tuple[str, str], ...] = ()
    service: str = ""  # grpc: the service name asked for ("": the server as a whole)


def parse_probes(text: str) -> dict[str, AppProbe]:
    """The proxy's probes from the JSON that `meshpy inject` writes; ValueError names what is wrong."""
    try:
        data = json.loads(text)
    except ValueError as err:
        raise ValueError(f"not JSON: {err}") from None
    if not isinstance(data, dict):
        raise ValueError("expected an object of path -> probe")
    return {path: _probe(path, spec) for path, spec in data.items()}


def _probe(path: str, spec: object) -> AppProbe:
    if not path.startswith(PATH_PREFIX):
        raise ValueError(f"{path}: a probe's path starts with {PATH_PREFIX}")
    if not isinstance(spec, dict):
        raise ValueError(f"{path}: expected an object")
    kinds = [h for h in HANDLERS if h in spec]
    if len(kinds) != 1 or not isinstance(spec[kinds[0]], dict):
        raise ValueError(f"{path}: expected one of {', '.join(HANDLERS)}")
    kind, handler = kinds[0], spec[kinds[0]]
    port, timeout = handler.get("port"), spec.get("timeoutSeconds", DEFAULT_TIMEOUT)
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise ValueError(f"{path}: port {port!r} is not a port number")
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
        raise ValueError(f"{path}: timeoutSeconds {timeout!r} is not a number of seconds")
    if kind == "grpc":
        return AppProbe(kind, port, timeout, service=str(handler.get("service") or ""))
    if kind == "tcpSocket":
        return AppProbe(kind, port, timeout)
    scheme = str(handler.get("scheme", "HTTP")).upper()
    if scheme not in ("HTTP", "HTTPS"):
        raise ValueError(f"{path}: scheme {scheme!r} is not HTTP or HTTPS")
    headers = []
    given = handler.get("httpHeaders") or []
    if not isinstance(given, list) or not all(isinstance(h, dict) for h in given):
        raise ValueError(f"{path}: httpHeaders: expected a list of {{name, value}}")
    for header in given:
        name, value = str(header.get("name", "")), str(header.get("value", ""))
        if not _TOKEN.match(name) or any(c in value for c in "\r\n\0"):
            raise ValueError(f"{path}: {name!r}: not a header that can be sent")
        headers.append((name, value))
    # Encoded as the kubelet's URL would encode it: spaces and the like escaped, the rest as written.
    target = quote(str(handler.get("path") or "/"), safe="!#$%&'()*+,/:;=?@[]~")
    return AppProbe(kind, port, timeout, target if target.startswith("/") else "/" + target,
                    scheme == "HTTPS", tuple(headers))


async def check(probe: AppProbe, host: str = APP_HOST) -> tuple[int, str]:
    """Make the probe's check of the app: (the status to answer, why)."""
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(probe.timeout):
            tls = _insecure_context() if probe.https else None
            reader, writer = await asyncio.open_connection(host, probe.port, ssl=tls)
            if probe.kind == "tcpSocket":
                return 200, f"connected to {host}:{probe.port}"
            if probe.kind == "grpc":
                if await grpc_health(reader, writer, f"{host}:{probe.port}".encode(), probe.service):
                    return 200, "SERVING"
                return 503, f"{host}:{probe.port}: not SERVING"
            writer.write(_request(probe, host))
            line = await reader.readline()
    except TimeoutError:
        return 503, f"{host}:{probe.port}: no answer within {probe.timeout:g} s"
    except _FAILED as err:
        return 503, f"{host}:{probe.port}: {_why(err)}"
    finally:
        if writer is not None:
            await _close(writer)
    parts = line.split()
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
        return 503, f"{host}:{probe.port}: not an HTTP answer"
    status = int(parts[1])
    # The app's status, passed on: the kubelet judges it as it would have judged the app's answer.
    if not 200 <= status < 600:
        return 503, f"{host}:{probe.port}: answered {status}"
    return status, f"the app answered {status}"


def _why(err: Exception) -> str:
    """"Connection refused" rather than asyncio's "Connect call failed (...)"."""
    if isinstance(err, OSError) and not isinstance(err, ssl.SSLError) and err.errno is not None:
        return os.strerror(err.errno)
    return str(err) or type(err).__name__


def _request(probe: AppProbe, host: str) -> bytes:
    """The kubelet's request: its default headers unless the probe sets them, then the probe's own."""
    given = {name.lower() for name, _ in probe.headers}
    defaults = [("Host", f"{host}:{probe.port}"), ("User-Agent", USER_AGENT), ("Accept", "*/*")]
    headers = [*(h for h in defaults if h[0].lower() not in given),
               *(h for h in probe.headers if h[0].lower() != "connection"), ("Connection", "close")]
    lines = "".join(f"{name}: {value}\r\n" for name, value in headers)
    return f"GET {probe.path} HTTP/1.1\r\n{lines}\r\n".encode()


_CONTEXT: ssl.SSLContext | None = None


def _insecure_context() -> ssl.SSLContext:
    """The kubelet checks no certificate of an HTTPS probe: the app's is often self-signed."""
    global _CONTEXT
    if _CONTEXT is None:
        _CONTEXT = ssl.create_default_context()
        _CONTEXT.check_hostname = False
        _CONTEXT.verify_mode = ssl.CERT_NONE
    return _CONTEXT


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(Exception):
        async with asyncio.timeout(1):  # a TLS peer may never answer the close
            await writer.wait_closed()


def probe_server(text: str, source: str, listen: str) -> ProbeServer:
    """The server of `meshpy run --app-probes` (or its variable, `source`), not started yet."""
    try:
        probes = parse_probes(text)
    except ValueError as err:
        raise ValueError(f"{source}: {err}") from None
    return ProbeServer(probes, parse_address(listen, allow_port_zero=True))


class ProbeServer:
    """The probe port. `start` binds it (OSError when it cannot), `close` stops it and its connections."""

    def __init__(self, probes: dict[str, AppProbe], address: Address, app_host: str = APP_HOST) -> None:
        self.probes = probes
        self.address = address
        self.app_host = app_host
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self._failing: set[str] = set()  # paths whose last check failed, to log each change once

    @property
    def port(self) -> int:
        """The bound port (the address's, unless that was 0)."""
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, self.address.host, self.address.port,
                                                  limit=MAX_HEAD)
        log.info("app probes on %s:%d: %s", self.address.host, self.port,
                 ", ".join(f"{path} ({p.kind} :{p.port})" for path, p in self.probes.items()) or "none")

    async def close(self) -> None:
        if self._server is None:
            return
        self._server.close()
        # The connections first: since Python 3.12 wait_closed waits for them, up to READ_TIMEOUT.
        for task in list(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            async with asyncio.timeout(READ_TIMEOUT):
                head = await reader.readuntil(b"\r\n\r\n")
            status, why, method = await self._answer(head)
            body = b"" if method == b"HEAD" or no_body_status(status) else why.encode() + b"\n"
            writer.write(b"HTTP/1.1 %d %s\r\ncontent-type: text/plain\r\ncontent-length: %d\r\n"
                         b"connection: close\r\n\r\n%s" % (status, reason_phrase(status), len(body), body))
            await writer.drain()
        except (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            self._handlers.discard(task)
            await _close(writer)

    async def _answer(self, head: bytes) -> tuple[int, str, bytes]:
        parts = head.split(b"\r\n", 1)[0].split(b" ")
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
            return 400, "bad request", b""
        method, path = parts[0], parts[1].split(b"?", 1)[0].decode("latin-1")
        probe = self.probes.get(path)
        if probe is None:
            return 404, f"no probe at {path}", method
        if method not in (b"GET", b"HEAD"):
            return 405, "GET only", method
        status, why = await check(probe, self.app_host)
        failing = not 200 <= status < 400
        if failing != (path in self._failing):
            self._failing ^= {path}
            log.log(logging.WARNING if failing else logging.INFO, "app probe %s %s: %s", path,
                    "fails" if failing else "passes again", why)
        return status, why, method
