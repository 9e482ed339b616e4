"""The Lua handle's httpCall(): one request to a cluster through meshpy's side-call client
(meshpy.upstream.side_calls), as Envoy's async client makes it, and its answer as the script gets it.

As Envoy (checked against Envoy 1.40): the request carries the script's headers (`:authority` is its
Host), `content-length` only when the script gives a body, `x-envoy-internal: true`,
`x-forwarded-for` with the address Envoy's async client stands for (192.0.2.2, unless the options
say send_xff = false) and `x-envoy-expected-rq-timeout-ms` when there is a timeout. A timeout answers
504 `upstream request timeout`; a call that gets no answer (no host, connect failure, reset) answers
503 with the router's words; the answer's headers start with `:status` and end with
`x-envoy-upstream-service-time`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from meshpy.upstream.side_calls import SideCallError, SideClient

if TYPE_CHECKING:
    from meshpy.upstream.cluster import ClusterRuntime

log = logging.getLogger("meshpy.lua")

Fields = list[tuple[bytes, bytes]]
Answer = tuple[int, Fields, bytes]
# The client address of Envoy's async client, in the x-forwarded-for it sends (a documentation range).
ASYNC_CLIENT_ADDRESS = b"192.0.2.2"
# Unbounded in Envoy: a fire-and-forget call is still given an end here, so no task outlives its use.
ASYNCHRONOUS_LIMIT = 60.0
_TIMEOUT: Answer = (504, [(b"content-length", b"24"), (b"content-type", b"text/plain")],
                    b"upstream request timeout")


def _failed(reason: str) -> Answer:
    body = b"upstream connect error or disconnect/reset before headers. reset reason: " + reason.encode()
    return 503, [(b"content-length", b"%d" % len(body)), (b"content-type", b"text/plain")], body


async def http_call(client: SideClient, cluster: ClusterRuntime, pairs: Fields, body: bytes | None,
                    timeout: float | None, xff: bool) -> Answer:
    """The call, answered whatever happens (the script always gets headers and a body)."""
    method = path = authority = b""
    fields: Fields = []
    for name, value in pairs:
        if name == b":method":
            method = value
        elif name == b":path":
            path = value
        elif name == b":authority":
            authority = value
        elif not name.startswith(b":"):
            fields.append((name, value))
    fields.append((b"x-envoy-internal", b"true"))
    if xff:
        fields.append((b"x-forwarded-for", ASYNC_CLIENT_ADDRESS))
    if timeout is not None:
        fields.append((b"x-envoy-expected-rq-timeout-ms", b"%d" % int(timeout * 1000)))
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    try:
        async with asyncio.timeout(timeout):
            answer = await client.call(cluster, method, path, authority, fields, body)
    except TimeoutError:
        return _TIMEOUT
    except ConnectionRefusedError:
        return _failed("remote connection failure")
    except (OSError, SideCallError, ValueError) as err:
        log.debug("httpCall to %s failed: %s", cluster.model.name, err)
        return _failed("connection termination")
    took = b"%d" % int((loop.time() - t0) * 1000)
    headers = list(answer.headers)
    headers.append((b"x-envoy-upstream-service-time", took))
    return answer.status, headers, answer.body


async def quietly(call: Coroutine[Any, Any, Answer]) -> None:
    """An asynchronous httpCall: its answer is dropped."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(ASYNCHRONOUS_LIMIT):
            await call
