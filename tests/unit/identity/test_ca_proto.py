"""The CA messages declared in meshpy/identity/ca_proto.py match Istio's ca.proto as protoc compiles it:
same package, names, field numbers, types and labels, so the bytes mean the same on both sides."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2

from meshpy.identity import ca_proto

# istio/api security/v1alpha1/ca.proto (the current one: `subject_id` = 2 is gone, metadata = 4 is there).
ISTIO_CA_PROTO = """
syntax = "proto3";
import "google/protobuf/struct.proto";
package istio.v1.auth;
message IstioCertificateRequest {
  string csr = 1;
  int64 validity_duration = 3;
  google.protobuf.Struct metadata = 4;
}
message IstioCertificateResponse {
  repeated string cert_chain = 1;
}
service IstioCertificateService {
  rpc CreateCertificate(IstioCertificateRequest) returns (IstioCertificateResponse) {}
}
"""


def compiled(tmp_path: Path) -> descriptor_pb2.FileDescriptorProto:
    grpc_tools = pytest.importorskip("grpc_tools")
    (tmp_path / "ca.proto").write_text(ISTIO_CA_PROTO)
    includes = Path(grpc_tools.__file__).parent / "_proto"
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{tmp_path}", f"-I{includes}",
                    f"--descriptor_set_out={tmp_path / 'out.pb'}", "ca.proto"], check=True, timeout=60)
    files = descriptor_pb2.FileDescriptorSet.FromString((tmp_path / "out.pb").read_bytes())
    return files.file[0]


def shape(message: descriptor_pb2.DescriptorProto) -> list[tuple[str, int, int, int, str]]:
    return [(f.name, f.number, f.type, f.label, f.type_name) for f in message.field]


def test_the_messages_are_istios(tmp_path: Path) -> None:
    theirs = {m.name: m for m in compiled(tmp_path).message_type}
    ours = ca_proto.IstioCertificateRequest.DESCRIPTOR.file
    assert ours.package == "istio.v1.auth"
    for cls in (ca_proto.IstioCertificateRequest, ca_proto.IstioCertificateResponse):
        mine = descriptor_pb2.DescriptorProto()
        cls.DESCRIPTOR.CopyToProto(mine)
        assert shape(mine) == shape(theirs[mine.name])
    [service] = ours.services_by_name.values()
    assert f"/{service.full_name}/{service.methods[0].name}" == ca_proto.CREATE_CERTIFICATE


def test_round_trip_through_the_wire() -> None:
    request = ca_proto.IstioCertificateRequest(csr="-----BEGIN CERTIFICATE REQUEST-----", validity_duration=3)
    request.metadata.update({"ClusterID": "Kubernetes"})
    back = ca_proto.IstioCertificateRequest.FromString(request.SerializeToString())
    assert back.validity_duration == 3 and back.metadata["ClusterID"] == "Kubernetes"
    assert request.SerializeToString()[:1] == b"\x0a"  # field 1, length-delimited: csr
    response = ca_proto.IstioCertificateResponse(cert_chain=["leaf", "root"])
    assert list(ca_proto.IstioCertificateResponse.FromString(response.SerializeToString()).cert_chain) == [
        "leaf", "root"]
