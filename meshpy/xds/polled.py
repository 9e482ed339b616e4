"""The xDS conversations that are not streams: REST polling and a watched file (Envoy's
HttpSubscriptionImpl and FilesystemSubscriptionImpl).

REST: every refresh_delay (plus a random part of it, as Envoy jitters it) a DiscoveryRequest in JSON is
POSTed to /v3/discovery:<type> (the path of the type's Fetch* method) on the config source's cluster,
with the node in every request (REST keeps nothing between them), the version last accepted, and the
names wanted; the Host is the cluster's name. 200 brings a DiscoveryResponse in JSON, 304 says nothing
changed; anything else, or no answer within request_timeout, is a failed poll that the next one
repeats. A refused update is logged and counted: REST has no NACK, and the version stays.

A file holds one DiscoveryResponse (JSON or YAML; `.pb` binary, `.pb_text` text format) and is read
when it is first watched and whenever its status (or its watched directory's) changes.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import httptools
import yaml
from envoy.service.discovery.v3.discovery_pb2 import DiscoveryRequest, DiscoveryResponse
from google.protobuf import json_format, text_format  # type: ignore[import-untyped, unused-ignore]
from google.protobuf.message import DecodeError  # type: ignore[import-untyped, unused-ignore]

from meshpy.errors import ConfigError
from meshpy.model.unix_address import target_address
from meshpy.model.yaml_values import parse_address
from meshpy.xds import envoy_json
from meshpy.xds.client_streams import Rejected
from meshpy.xds.secrets import SECRET
from meshpy.xds.store import CLUSTER, ENDPOINT, LISTENER, ROUTE, RUNTIME, WILDCARD
from meshpy.xds.translate import MISSING_TYPE, import_type

if TYPE_CHECKING:
    from meshpy.model.types import XdsServer
    from meshpy.xds.channels import Channel

log = logging.getLogger("meshpy.xds")

REST_PATHS = {LISTENER: "/v3/discovery:listeners", CLUSTER: "/v3/discovery:clusters",
              ROUTE: "/v3/discovery:routes", ENDPOINT: "/v3/discovery:endpoints",
              SECRET: "/v3/discovery:secrets", RUNTIME: "/v3/discovery:runtime"}
WATCH_INTERVAL = 1.0  # seconds between looks at a watched file
MAX_BODY = 64 * 1024 * 1024  # a bigger answer is refused rather than held


class PollFailed(Exception):
    """A poll that got no usable answer (the next poll tries again)."""


def discovery_response(data: Any) -> Any:
    """A DiscoveryResponse from its JSON form (parsed), read as Envoy reads one: its resources' types
    are found on demand, unknown fields are passed over. ConfigError says what is wrong."""
    if not isinstance(data, dict):
        raise ConfigError.at("", f"a DiscoveryResponse is a mapping, got {type(data).__name__}")
    data, problems = envoy_json.lenient(data, DiscoveryResponse.DESCRIPTOR, envoy_json.resolver(import_type))
    if problems:
        raise ConfigError(problems)
    tried: set[str] = set()
    while True:
        try:
            return json_format.ParseDict(data, DiscoveryResponse(), ignore_unknown_fields=True)
        except json_format.ParseError as exc:
            missing = MISSING_TYPE.search(str(exc))
            if missing is None or missing.group(1) in tried or not import_type(missing.group(1)):
                raise ConfigError.at("", str(exc).split("\n", 1)[0]) from None
            tried.add(missing.group(1))
        except (AttributeError, KeyError, TypeError, IndexError, RecursionError) as exc:
            reason = f"cannot be read as a DiscoveryResponse ({type(exc).__name__})"
            raise ConfigError.at("", reason) from None


async def _apply(ch: Channel, type_url: str, resp: Any, origin: str) -> None:
    if resp.type_url and resp.type_url != type_url:
        ch.client.refused(type_url, f"{origin}: a {resp.type_url} response where {type_url} was asked for")
        return
    try:
        await ch.client.accept(type_url, resp.resources, replace=type_url in WILDCARD)
    except Rejected as err:
        ch.client.nacked(type_url, f"{origin}: {err}")
    else:
        ch.versions[type_url] = resp.version_info
        ch.client.resubscribe(type_url)


# -- REST ---------------------------------------------------------------------------------------------
async def rest_poll(ch: Channel) -> AsyncIterator[None]:
    type_url = ch.types[0]
    server = ch.source.server
    assert server is not None
    path = REST_PATHS[type_url]
    failing = False
    while True:
        names = () if type_url in WILDCARD else sorted(ch.wanted(type_url))
        request = DiscoveryRequest(version_info=ch.versions.get(type_url, ""), node=ch.client.node,
                                   resource_names=names, type_url=type_url)
        body = json_format.MessageToJson(request, indent=None, preserving_proto_field_name=True).encode()
        try:
            status, answer = await asyncio.wait_for(_post(server, path, body), ch.source.request_timeout)
            if status not in (200, 304):
                raise PollFailed(f"HTTP {status}")
        except (OSError, TimeoutError, PollFailed) as err:
            ch.connected = False
            # Said once per outage, as the ADS stream's failures.
            log.log(logging.DEBUG if failing else logging.WARNING, "xds: %s: REST update for %s failed: %s",
                    ch.name, path, str(err) or type(err).__name__)
            failing = True
        else:
            if failing or not ch.connected:
                log.info("xds: %s: polling %s%s", ch.name, ch.target, path)
            ch.connected, failing = True, False
            if status == 200:
                await _rest_answer(ch, type_url, answer, path)
        yield None
        delay = ch.source.refresh_delay
        await asyncio.sleep(delay + random.uniform(0, delay))


async def _rest_answer(ch: Channel, type_url: str, answer: bytes, path: str) -> None:
    try:
        resp = discovery_response(yaml.safe_load(answer.decode()))
    except (ConfigError, UnicodeDecodeError, yaml.YAMLError) as err:
        detail = "; ".join(str(i) for i in err.issues) if isinstance(err, ConfigError) else str(err)
        ch.client.refused(type_url, f"REST {path}: not a DiscoveryResponse: {detail}")
        return
    await _apply(ch, type_url, resp, f"REST {path}")


async def _post(server: XdsServer, path: str, body: bytes) -> tuple[int, bytes]:
    """One POST over a connection of its own: (status, body)."""
    where = target_address(server.target)
    if isinstance(where, str):
        opening = asyncio.open_unix_connection(where if not where.startswith("@") else "\0" + where[1:])
    else:
        address = parse_address(server.target)
        opening = asyncio.open_connection(str(address.host), address.port)
    reader, writer = await asyncio.wait_for(opening, server.connect_timeout)
    try:
        host = server.cluster or server.target
        writer.write(f"POST {path} HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\n"
                     f"content-length: {len(body)}\r\n\r\n".encode() + body)
        return await _response(reader)
    finally:
        writer.transport.abort()


class _Answer:
    def __init__(self) -> None:
        self.body: list[bytes] = []
        self.size = 0
        self.done = False

    def on_body(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > MAX_BODY:
            raise PollFailed(f"an answer over {MAX_BODY} bytes")
        self.body.append(data)

    def on_message_complete(self) -> None:
        self.done = True


async def _response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    answer = _Answer()
    parser = httptools.HttpResponseParser(answer)
    while not answer.done:
        data = await reader.read(65536)
        try:
            if not data:
                parser.feed_data(b"")  # the end of a body that runs to the close
                if not answer.done:
                    raise PollFailed("the connection closed before the answer was complete")
                break
            parser.feed_data(data)
        except httptools.HttpParserError as err:
            raise PollFailed(f"a malformed answer ({err})") from None
    return parser.get_status_code(), b"".join(answer.body)


# -- a file -------------------------------------------------------------------------------------------
async def file_watch(ch: Channel) -> AsyncIterator[None]:
    type_url = ch.types[0]
    path, directory = ch.source.path, ch.source.watched_directory
    seen: tuple[Any, ...] | None = None
    while True:
        stamp = (_stamp(path), _stamp(directory) if directory else None)
        if stamp != seen:
            seen = stamp
            ch.connected = stamp[0] is not None
            if stamp[0] is not None:
                await _read_file(ch, type_url, path)
            yield None
        await asyncio.sleep(WATCH_INTERVAL)


def _stamp(path: str) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size, st.st_ino


async def _read_file(ch: Channel, type_url: str, path: str) -> None:
    try:
        with open(path, "rb") as f:
            raw = f.read()
        if path.endswith(".pb"):
            resp = DiscoveryResponse.FromString(raw)
        elif path.endswith(".pb_text"):
            resp = text_format.Parse(raw.decode(), DiscoveryResponse())
        else:
            resp = discovery_response(yaml.safe_load(raw.decode()))
    except (ConfigError, OSError, UnicodeDecodeError, yaml.YAMLError, DecodeError,
            text_format.ParseError) as err:
        detail = "; ".join(str(i) for i in err.issues) if isinstance(err, ConfigError) else str(err)
        ch.client.refused(type_url, f"{path}: not a DiscoveryResponse: {detail}")
        return
    await _apply(ch, type_url, resp, path)
