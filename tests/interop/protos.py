"""The grpc.testing protos (tests/interop/proto), compiled with grpc_tools.protoc into a temporary
directory at test time: nothing generated is kept in the repository. Compiled once per process (the
protobuf descriptor pool takes each file once)."""

from __future__ import annotations

import importlib
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

PROTO_ROOT = Path(__file__).resolve().parent / "proto"
PACKAGE = "interop_pb"  # the Python package the generated modules land in (and the protos' folder)

_loaded: Protos | None = None


@dataclass(frozen=True)
class Protos:
    empty: ModuleType  # interop_pb.empty_pb2: Empty
    messages: ModuleType  # interop_pb.messages_pb2: SimpleRequest, StreamingOutputCallRequest, ...
    test: ModuleType  # interop_pb.test_pb2 (the services' descriptors)
    services: ModuleType  # interop_pb.test_pb2_grpc: TestServiceStub, TestServiceServicer, ...


def load() -> Protos:
    global _loaded
    if _loaded is not None:
        return _loaded
    with tempfile.TemporaryDirectory(prefix="meshpy-interop-pb-") as out:
        _loaded = _compile(out)  # imported: the modules stay in memory when the directory goes
    return _loaded


def _compile(out: str) -> Protos:
    from grpc_tools import protoc

    include = Path(protoc.__file__).resolve().parent / "_proto"  # the well-known types
    files = sorted(str(p.relative_to(PROTO_ROOT)) for p in (PROTO_ROOT / PACKAGE).glob("*.proto"))
    rc = protoc.main(["grpc_tools.protoc", f"-I{PROTO_ROOT}", f"-I{include}", f"--python_out={out}",
                      f"--grpc_python_out={out}", *files])
    if rc != 0:
        raise RuntimeError(f"protoc failed ({rc}) on {files}")
    sys.path.insert(0, out)
    try:
        return Protos(
            empty=importlib.import_module(f"{PACKAGE}.empty_pb2"),
            messages=importlib.import_module(f"{PACKAGE}.messages_pb2"),
            test=importlib.import_module(f"{PACKAGE}.test_pb2"),
            services=importlib.import_module(f"{PACKAGE}.test_pb2_grpc"),
        )
    finally:
        sys.path.remove(out)
