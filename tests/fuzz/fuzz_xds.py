"""xDS resources, in process, through the xDS client's own entry point: `AdsClient.accept` (decoding
each resource from its Any, the type check, XdsStore.update with listener_from_proto,
cluster_from_proto, route_config_from_proto and endpoints_from_cla), then `XdsStore.assemble` and the
compile steps of config_checks. The client is never started: no gRPC, no sockets; it sees one
resource at a time and never goes live (only one wildcard type has ever answered).

Input: a first line naming the type (`Listener`, `Cluster`, `RouteConfiguration`,
`ClusterLoadAssignment`), then the resource in protobuf text format; or `bin:<type>` and the bytes a
control plane would put in the Any (wire format, possibly corrupt).

Property: a resource is accepted, or refused with Rejected (a NACK whose detail names the problem);
nothing else comes out, and an accepted store assembles to a config that compiles or says why.

The structured mutator walks the message by its descriptors: a scalar set to an edge value, an enum to
any number, a field cleared, a repeated item duplicated or dropped, a submessage copied from another
seed of the same type, a `typed_config` re-packed as another type.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import warnings
from collections.abc import Iterator
from typing import Any

from config_checks import check_issues, compile_config
from fuzzkit import Finding, Target, corpus
from google.protobuf import any_pb2, text_format
from google.protobuf.descriptor import FieldDescriptor

from meshpy.errors import ConfigError
from meshpy.model.types import Config, XdsSource
from meshpy.xds.client import AdsClient
from meshpy.xds.client_streams import Rejected
from meshpy.xds.store import CLUSTER, ENDPOINT, LISTENER, MESSAGES, ROUTE, XdsStore

TYPES = {"Listener": LISTENER, "Cluster": CLUSTER, "RouteConfiguration": ROUTE,
         "ClusterLoadAssignment": ENDPOINT}


class _Client:
    """One App and AdsClient for the whole run (made lazily: atheris imports this module first)."""

    def __init__(self) -> None:
        from meshpy.app import App

        self.loop = asyncio.new_event_loop()
        app = App(self.loop, drain_time=0.0, grace_time=0.0)
        source = XdsSource(server="127.0.0.1:1", node_json='{"id": "fuzz"}')
        self.client = AdsClient(app, Config(), source)
        self.fresh = self.client.store

    def accept(self, type_url: str, resource: any_pb2.Any) -> XdsStore:
        c = self.client
        c.store, c.answered = self.fresh, set()
        c.last_nack.clear()
        self.loop.run_until_complete(c.accept(type_url, [resource], (), type_url in (LISTENER, CLUSTER)))
        if c.initialized.is_set():
            raise Finding("the client went live on one resource")
        return c.store


    def close(self) -> None:
        self.loop.close()


_CLIENT: list[_Client] = []


@contextlib.contextmanager
def client() -> Iterator[None]:
    """The App and AdsClient of a run, their loop closed at its end."""
    _CLIENT.append(_Client())
    try:
        yield
    finally:
        _CLIENT.pop().close()


def parse(data: bytes) -> tuple[str, any_pb2.Any] | None:
    """(type URL, the Any a control plane would send), or None for an input that is no resource."""
    first, _, rest = data.partition(b"\n")
    kind = first.decode("latin-1").strip()
    if kind.startswith("bin:"):
        type_url = TYPES.get(kind[4:])
        return (type_url, any_pb2.Any(type_url=type_url, value=rest)) if type_url else None
    type_url = TYPES.get(kind)
    if type_url is None:
        return None
    msg = MESSAGES[type_url]()
    try:
        with warnings.catch_warnings():  # text_format warns of odd string escapes: not meshpy's business
            warnings.simplefilter("ignore")
            text_format.Parse(rest.decode("utf-8", "replace"), msg)
    except (text_format.ParseError, ValueError, RecursionError):  # (RecursionError: nesting too deep)
        return None
    resource = any_pb2.Any()
    resource.Pack(msg)
    return type_url, resource


def run(data: bytes) -> None:
    parsed = parse(data)
    if parsed is None:
        return
    try:
        store = _CLIENT[0].accept(*parsed)
    except Rejected as err:
        if not str(err).strip():
            raise Finding("a NACK without a reason") from None
        return
    try:
        config, _, _ = store.assemble(frozenset(store.of(LISTENER)))
    except ConfigError as err:
        check_issues(err)
        return
    compile_config(config)


# -- mutation ----------------------------------------------------------------------------------------
EDGE = {
    FieldDescriptor.CPPTYPE_INT32: (0, 1, -1, 2**31 - 1, -(2**31)),
    FieldDescriptor.CPPTYPE_INT64: (0, 1, -1, 2**63 - 1, -(2**63), 315576000000, 315576000001),
    FieldDescriptor.CPPTYPE_UINT32: (0, 1, 65535, 65536, 2**32 - 1),
    FieldDescriptor.CPPTYPE_UINT64: (0, 1, 2**64 - 1, 2**53 + 1),
    FieldDescriptor.CPPTYPE_DOUBLE: (0.0, -1.0, 1e308, float("inf"), float("nan"), 100.5),
    FieldDescriptor.CPPTYPE_FLOAT: (0.0, -1.0, 3e38, float("inf"), float("nan")),
    FieldDescriptor.CPPTYPE_BOOL: (True, False),
    FieldDescriptor.CPPTYPE_STRING: ("", "x", "*", "/", "^(a+)+$", "(", "127.0.0.1", "::1", "a\x00b",
                                     "a\r\nb", "envoy.filters.http.router", "x" * 300, "é"),
}
_SEEDS: dict[str, list[Any]] = {}


def _seed_messages(type_url: str) -> list[Any]:
    if not _SEEDS:
        for _, data in corpus("xds"):
            parsed = parse(data)
            if parsed is not None:
                msg = MESSAGES[parsed[0]]()
                parsed[1].Unpack(msg)
                _SEEDS.setdefault(parsed[0], []).append(msg)
        _SEEDS.setdefault("", [])
    return _SEEDS.get(type_url, [])


def _messages(msg: Any, out: list[Any]) -> None:
    out.append(msg)
    for fd, value in msg.ListFields():
        if fd.cpp_type != FieldDescriptor.CPPTYPE_MESSAGE or fd.message_type.GetOptions().map_entry:
            continue
        for sub in (value if fd.label == FieldDescriptor.LABEL_REPEATED else [value]):
            _messages(sub, out)


_DONORS: dict[str, list[Any]] = {}


def _donors(full_name: str, type_url: str) -> list[Any]:
    """Messages of type `full_name` anywhere in the seeds (of any resource type), found once."""
    if not _DONORS:
        every: list[Any] = []
        for t in TYPES.values():
            for seed in _seed_messages(t):
                _messages(seed, every)
        for m in every:
            _DONORS.setdefault(m.DESCRIPTOR.full_name, []).append(m)
        _DONORS.setdefault("", [])
    return _DONORS.get(full_name, [])


def mutate_message(root: Any, type_url: str, rng: random.Random) -> None:
    every: list[Any] = []
    _messages(root, every)
    msg = rng.choice(every)
    fields = msg.DESCRIPTOR.fields
    if not fields:
        return
    fd = rng.choice(fields)
    repeated = fd.label == FieldDescriptor.LABEL_REPEATED
    op = rng.randrange(4)
    if op == 0:
        msg.ClearField(fd.name)
    elif fd.cpp_type == FieldDescriptor.CPPTYPE_MESSAGE:
        if fd.message_type.GetOptions().map_entry:
            return
        target = getattr(msg, fd.name)
        if repeated:
            if op == 1 and len(target):
                target.add().CopyFrom(target[rng.randrange(len(target))])
            elif op == 2 and len(target):
                del target[rng.randrange(len(target))]
            else:
                donors = _donors(fd.message_type.full_name, type_url)
                new = target.add()
                if donors:
                    new.CopyFrom(rng.choice(donors))
        elif fd.message_type.full_name == "google.protobuf.Any" and rng.random() < 0.5:
            donors = _donors("google.protobuf.Any", type_url)
            if donors:
                target.CopyFrom(rng.choice(donors))
        else:
            donors = _donors(fd.message_type.full_name, type_url)
            if donors:
                target.CopyFrom(rng.choice(donors))
            else:
                target.SetInParent()
    else:
        if fd.cpp_type == FieldDescriptor.CPPTYPE_ENUM:
            value: Any = rng.choice([v.number for v in fd.enum_type.values] + [99])
        else:
            value = rng.choice(EDGE[fd.cpp_type])
            if fd.type == FieldDescriptor.TYPE_BYTES:
                value = value.encode() if isinstance(value, str) else b"\x00"
        try:
            if repeated:
                getattr(msg, fd.name).append(value)
            else:
                setattr(msg, fd.name, value)
        except (ValueError, TypeError):  # out of the field's range, not UTF-8...
            pass


def mutate(data: bytes, rng: random.Random) -> bytes:
    parsed = parse(data)
    if parsed is None:
        raise ValueError("not a resource")
    type_url, resource = parsed
    msg = MESSAGES[type_url]()
    resource.Unpack(msg)
    for _ in range(rng.randint(1, 3)):
        mutate_message(msg, type_url, rng)
    kind = next(k for k, v in TYPES.items() if v == type_url)
    if rng.random() < 0.05:  # wire format, to be corrupted by the byte mutator next
        return f"bin:{kind}\n".encode() + msg.SerializeToString()
    return f"{kind}\n".encode() + text_format.MessageToString(msg).encode()


TARGET = Target(name="xds", run=run, mutate=mutate, max_len=65536, time_limit=5.0,
                context=client)
