"""The ADS stream over TLS as an Envoy bootstrap's ADS cluster says it (its UpstreamTlsContext), with
Envoy's meaning.

gRPC's own TLS (grpc.ssl_channel_credentials) cannot say it: it always checks the server's certificate
(against its own roots when given none, where Envoy without a validation context checks nothing), always
checks the certificate's names against the target's host (Envoy checks names only through SAN matchers),
and has no SAN matchers, TLS versions or cipher suites. So the stream takes a detour inside this
process: gRPC speaks plaintext HTTP/2 to a Unix socket in a directory only this user may enter, and each
connection on it is carried to the server over TLS made by meshpy's upstream TLS, the same code as any
cluster's UpstreamTlsContext (meshpy.transport.connector: SNI, client certificate, SAN matchers, TLS
parameters; ALPN `h2` when the context lists none, as Envoy's HTTP/2 pool offers it).

The TLS context is made again for each connection: files are read again (a rewritten ConfigMap), and the
mesh's trust bundle, once the CA has sent it over a connection this context checked (`learn`), is trusted
beside them, as with `meshpy run --xds-ca`. A connection that fails says why in `hint`, which the xDS
client and the CA client add to their failure's log line.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import ssl
import tempfile
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import grpc

from meshpy.errors import ConfigError
from meshpy.model.unix_address import SockAddr, target_address
from meshpy.model.yaml_values import parse_address
from meshpy.transport.connector import Connector
from meshpy.transport.tls_contexts import ClientContext, client_context

if TYPE_CHECKING:
    from cryptography import x509

    from meshpy.model.tls import ClientTls
    from meshpy.model.types import TcpKeepalive
    from meshpy.tasks import TaskOwner

log = logging.getLogger("meshpy.xds")

WHERE = "xds.tls"  # how errors in the context name it (the ADS cluster's transport_socket)
_CHUNK = 64 * 1024


class AdsClusterTls:
    """A `ControlPlaneTls` (meshpy.identity.control_trust) for the ADS server `server` (host:port)."""

    def __init__(self, server: str, tls: ClientTls, connect_timeout: float,
                 keepalive: TcpKeepalive | None = None) -> None:
        self.server = server
        self.keepalive = keepalive  # the ADS cluster's tcp_keepalive, on each TCP connection
        # A Unix socket target (a pipe ADS cluster): TLS over it, as Envoy's transport_socket allows.
        target = target_address(server)
        if target is None:
            address = parse_address(server)
            target = (str(address.host), address.port)
        self._target: SockAddr = target
        # Envoy's HTTP/2 connection pool offers h2 when the context lists no ALPN; gRPC servers want it.
        self.tls = tls if tls.alpn else replace(tls, alpn=("h2",))
        self.connect_timeout = connect_timeout
        self.last_error = ""  # why the last connection to the server failed; "" once one succeeds
        self._learned = ""
        self._dir: Path | None = None
        self._server: asyncio.AbstractServer | None = None
        self._tasks: TaskOwner | None = None
        self._open: set[asyncio.StreamWriter] = set()

    def check(self) -> None:
        """Make the context now (read every file it names); ValueError says what is wrong."""
        try:
            made = client_context(self.tls, WHERE)
        except ConfigError as err:
            raise ValueError("; ".join(str(i) for i in err.issues)) from None
        if made.ctx.verify_mode == ssl.CERT_NONE:
            # As Envoy: a context without a validation context checks nothing. Said, since anyone on
            # the path can then pose as the control plane.
            log.warning("xds: the ADS cluster's TLS has no validation_context: the certificate of %s is not "
                        "checked (as in Envoy); give trusted_ca to check it", self.server)

    async def start(self, tasks: TaskOwner) -> None:
        """Listen on the private socket; connections are carried by tasks of `tasks`."""
        self._tasks = tasks
        self._dir = Path(tempfile.mkdtemp(prefix="meshpy-xds-"))  # 0700: other users cannot connect
        self._server = await asyncio.start_unix_server(
            lambda r, w: tasks.spawn(self._carry(r, w), name="xds tls"), path=str(self._dir / "ads.sock"))

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for writer in list(self._open):
                writer.transport.abort()
            await self._server.wait_closed()
            self._server = None
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    # -- ControlPlaneTls -------------------------------------------------------------------------------
    def channel(self, address: str) -> grpc.aio.Channel:
        """A channel to the server through the socket (`address` is the server: the caller's name for it)."""
        assert self._dir is not None, "start() first"
        # A pool of its own: gRPC would otherwise hand a new channel a connection another channel to the
        # same socket still holds, made with the files as they were (with --xds-ca, the credentials of
        # each channel tell them apart).
        # (a Unix socket's target is no authority: gRPC's own default for one, localhost)
        authority = "localhost" if isinstance(self._target, str) else self.server
        return grpc.aio.insecure_channel(f"unix:{self._dir / 'ads.sock'}",
                                         options=[("grpc.default_authority", authority),
                                                  ("grpc.use_local_subchannel_pool", 1)])

    def learn(self, roots: Iterable[x509.Certificate]) -> None:
        from cryptography.hazmat.primitives import serialization

        self._learned = "".join(r.public_bytes(serialization.Encoding.PEM).decode() for r in roots)

    def hint(self, details: str) -> str:
        return f" (TLS to {self.server}: {self.last_error})" if self.last_error else ""

    # -- the connections -------------------------------------------------------------------------------
    def _context(self) -> ClientContext:
        made = client_context(self.tls, WHERE)  # files read now
        if self._learned and made.ctx.verify_mode == ssl.CERT_REQUIRED:
            made.ctx.load_verify_locations(cadata=self._learned)
        return made

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        """A new TLS connection to the server, or None with the reason in `last_error` (which reaches the
        log through the caller's failed call, `hint`: once per outage, not per attempt)."""
        try:
            connector = Connector(asyncio.get_running_loop(), self.connect_timeout, self.keepalive,
                                  tls=self._context())
            streams = await connector.streams(self._target)
        except ConfigError as err:  # a file that went away or went bad since the start
            self.last_error = "; ".join(str(i) for i in err.issues)
        except TimeoutError:
            self.last_error = f"no connection within the connect timeout ({self.connect_timeout:g} s)"
        except OSError as err:  # refused, unreachable, or the handshake failed (SSLError)
            self.last_error = str(err) or repr(err)
        else:
            self.last_error = ""
            log.debug("xds: TLS to %s: connected", self.server)
            return streams
        log.debug("xds: TLS to %s: %s", self.server, self.last_error)
        return None

    async def _carry(self, local_in: asyncio.StreamReader, local_out: asyncio.StreamWriter) -> None:
        self._open.add(local_out)
        try:
            remote = await self._connect()
            if remote is None:
                return  # gRPC sees the connection close, and its call fails with `hint` added
            remote_in, remote_out = remote
            self._open.add(remote_out)
            try:
                await self._pipe(local_in, remote_out, remote_in, local_out)
            finally:
                self._open.discard(remote_out)
                remote_out.transport.abort()
        finally:
            self._open.discard(local_out)
            local_out.transport.abort()

    async def _pipe(self, a_in: asyncio.StreamReader, b_out: asyncio.StreamWriter, b_in: asyncio.StreamReader,
                    a_out: asyncio.StreamWriter) -> None:
        """Both ways until either side ends: gRPC has no use for a half-closed connection."""
        assert self._tasks is not None
        ways = [self._tasks.spawn(_copy(a_in, b_out), name="xds tls out"),
                self._tasks.spawn(_copy(b_in, a_out), name="xds tls in")]
        try:
            await asyncio.wait(ways, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for way in ways:
                way.cancel()
            for way in ways:
                with contextlib.suppress(asyncio.CancelledError):
                    await way


async def _copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError):  # a reset, or a TLS alert: the connection is over either way
        while data := await reader.read(_CHUNK):
            writer.write(data)
            await writer.drain()
