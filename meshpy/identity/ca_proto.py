"""The CA's wire protocol, shared by the control plane (server) and the sidecar (client).

`istio.v1.auth.IstioCertificateService/CreateCertificate` is Istio's CSR API (istio/api
security/v1alpha1/ca.proto), field for field, so that Istio's agent can ask our CA and our client can ask
istiod. `meshpy.identity.v1.TrustBundle` is ours: Istio has no RPC for the roots (its agent reads them
from a mounted ConfigMap), and the last certificate of a chain shows one root only, not the two a
rotation publishes side by side. `Get` answers once; `Watch` answers at once and again at each change
of the bundle (a root staged, rotated, retired), which is how sidecars learn a new root before they
renew (Istio pushes its ROOTCA over SDS for the same reason).

There is no generated package for either, and no build step: the messages are declared here as a
FileDescriptorProto and their classes made by protobuf's message_factory, in a descriptor pool of this
module's own (so that an installed copy of Istio's generated code could never clash with it).
"""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, struct_pb2

ISTIO_SERVICE = "istio.v1.auth.IstioCertificateService"
CREATE_CERTIFICATE = f"/{ISTIO_SERVICE}/CreateCertificate"
BUNDLE_SERVICE = "meshpy.identity.v1.TrustBundle"
GET_BUNDLE = f"/{BUNDLE_SERVICE}/Get"
WATCH_BUNDLE = f"/{BUNDLE_SERVICE}/Watch"

_F = descriptor_pb2.FieldDescriptorProto


def _field(message: Any, name: str, number: int, kind: int, repeated: bool = False,
           type_name: str = "") -> None:
    field = message.field.add(name=name, number=number, type=kind, json_name=_camel(name),
                              label=_F.LABEL_REPEATED if repeated else _F.LABEL_OPTIONAL)
    if type_name:  # set only for messages: an empty one still counts as set
        field.type_name = type_name


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def _istio_file() -> descriptor_pb2.FileDescriptorProto:
    f = descriptor_pb2.FileDescriptorProto(name="istio/security/v1alpha1/ca.proto", package="istio.v1.auth",
                                           syntax="proto3", dependency=["google/protobuf/struct.proto"])
    request = f.message_type.add(name="IstioCertificateRequest")
    _field(request, "csr", 1, _F.TYPE_STRING)  # PEM
    # 2 was `subject_id`, removed from Istio's API: never reused.
    _field(request, "validity_duration", 3, _F.TYPE_INT64)  # seconds; 0: the CA's default
    _field(request, "metadata", 4, _F.TYPE_MESSAGE, type_name=".google.protobuf.Struct")
    response = f.message_type.add(name="IstioCertificateResponse")
    _field(response, "cert_chain", 1, _F.TYPE_STRING, repeated=True)  # PEM each: leaf first, root last
    service = f.service.add(name="IstioCertificateService")
    service.method.add(name="CreateCertificate", input_type=".istio.v1.auth.IstioCertificateRequest",
                       output_type=".istio.v1.auth.IstioCertificateResponse")
    return f


def _bundle_file() -> descriptor_pb2.FileDescriptorProto:
    f = descriptor_pb2.FileDescriptorProto(name="meshpy/identity/v1/bundle.proto",
                                           package="meshpy.identity.v1", syntax="proto3")
    f.message_type.add(name="TrustBundleRequest")
    response = f.message_type.add(name="TrustBundleResponse")
    _field(response, "trust_domain", 1, _F.TYPE_STRING)
    # PEM each: the root signing now first, then a staged one, then old ones until they retire.
    _field(response, "roots", 2, _F.TYPE_STRING, repeated=True)
    service = f.service.add(name="TrustBundle")
    service.method.add(name="Get", input_type=".meshpy.identity.v1.TrustBundleRequest",
                       output_type=".meshpy.identity.v1.TrustBundleResponse")
    service.method.add(name="Watch", input_type=".meshpy.identity.v1.TrustBundleRequest",
                       output_type=".meshpy.identity.v1.TrustBundleResponse", server_streaming=True)
    return f


def _build() -> dict[str, Any]:
    pool = descriptor_pool.DescriptorPool()
    struct = descriptor_pb2.FileDescriptorProto()
    struct_pb2.DESCRIPTOR.CopyToProto(struct)
    for f in (struct, _istio_file(), _bundle_file()):
        pool.Add(f)
    names = ("istio.v1.auth.IstioCertificateRequest", "istio.v1.auth.IstioCertificateResponse",
             "meshpy.identity.v1.TrustBundleRequest", "meshpy.identity.v1.TrustBundleResponse")
    return {n.rsplit(".", 1)[1]: message_factory.GetMessageClass(pool.FindMessageTypeByName(n))
            for n in names}


# Made once at import, as a generated *_pb2 module would: classes, not state.
_CLASSES = _build()
IstioCertificateRequest: Any = _CLASSES["IstioCertificateRequest"]
IstioCertificateResponse: Any = _CLASSES["IstioCertificateResponse"]
TrustBundleRequest: Any = _CLASSES["TrustBundleRequest"]
TrustBundleResponse: Any = _CLASSES["TrustBundleResponse"]
