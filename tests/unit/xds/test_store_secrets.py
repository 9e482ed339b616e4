"""Secrets over SDS in the xDS client's store: subscribed by the names listeners and clusters give,
listeners and clusters warming until theirs arrive, PEM filled into the model, bad secrets NACKed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2
from google.protobuf import json_format
from pki import Issued, make_ca

from control.sources.export import export
from meshpy.errors import ConfigError
from meshpy.model.load import load_text
from meshpy.model.types import Config
from meshpy.xds.secrets import SECRET
from meshpy.xds.store import CLUSTER, ENDPOINT, LISTENER, MESSAGES, ROUTE, XdsStore

MESHPY = """
listeners:
  - name: web
    address: 127.0.0.1:10443
    tls: {certificates: [{cert: /x.pem, key: /x.key}]}
    routes: [{match: /, cluster: backend}]
clusters:
  - name: backend
    endpoints: [127.0.0.1:8443]
    tls: {sni: backend.internal, ca: /ca.pem, verify_hostname: false}
"""


def secret(name: str, leaf: Issued | None = None, ca: bytes | None = None) -> Any:
    body: dict[str, Any] = {"name": name}
    if leaf is not None:
        body["tls_certificate"] = {"certificate_chain": {"inline_string": leaf.cert_pem.decode()},
                                   "private_key": {"inline_string": leaf.key_pem.decode()}}
    if ca is not None:
        body["validation_context"] = {"trusted_ca": {"inline_string": ca.decode()}}
    return json_format.ParseDict(body, MESSAGES[SECRET]())


def with_sds(res: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The exported resources, their certificates named for SDS instead of files."""
    listener = res[LISTENER]["web"]
    socket = listener.filter_chains[0].transport_socket.typed_config
    down = tls_pb2.DownstreamTlsContext()
    socket.Unpack(down)
    del down.common_tls_context.tls_certificates[:]
    ref = down.common_tls_context.tls_certificate_sds_secret_configs.add(name="web-cert")
    ref.sds_config.ads.SetInParent()
    socket.Pack(down)
    cluster = res[CLUSTER]["backend"]
    up = tls_pb2.UpstreamTlsContext()
    cluster.transport_socket.typed_config.Unpack(up)
    up.common_tls_context.ClearField("validation_context")
    ca_ref = up.common_tls_context.validation_context_sds_secret_config
    ca_ref.name = "backend-ca"
    ca_ref.sds_config.ads.SetInParent()
    cluster.transport_socket.typed_config.Pack(up)
    return res


def loaded() -> XdsStore:
    res = with_sds(export(load_text(MESHPY)))
    store = XdsStore(static=Config())
    for type_url in (CLUSTER, ENDPOINT, LISTENER, ROUTE):
        store = store.update(type_url, res[type_url].values(), replace=type_url in (CLUSTER, LISTENER))
    return store


def test_warming_until_the_secrets_arrive(tmp_path: Path) -> None:
    ca = make_ca(tmp_path)
    store = loaded()
    assert store.wanted(SECRET) == {"web-cert", "backend-ca"}
    assert store.missing() == {"Secret web-cert", "Secret backend-ca"}
    config, store, warming = store.assemble(frozenset())
    assert config.listeners == () and config.clusters == () and warming == {"web"}
    leaf = ca.issue("web", dns=("web",))
    store = store.update(SECRET, [secret("web-cert", leaf), secret("backend-ca", ca=ca.pem)])
    assert store.missing() == frozenset()
    config, store, warming = store.assemble(frozenset())
    (listener,) = config.listeners
    assert listener.tls is not None and listener.tls.certificates[0].chain is not None
    assert listener.tls.certificates[0].chain.inline == leaf.cert_pem and warming == frozenset()
    (cluster,) = config.clusters
    assert cluster.tls is not None and cluster.tls.validation is not None
    assert cluster.tls.validation.ca is not None and cluster.tls.validation.ca.inline == ca.pem
    # A secret nothing asks for is not kept.
    assert set(store.update(SECRET, [secret("other", leaf)]).secrets) == {"web-cert", "backend-ca"}


def test_a_bad_secret_is_nacked_by_name(tmp_path: Path) -> None:
    store = loaded()
    with pytest.raises(ConfigError) as err:
        store.update(SECRET, [secret("web-cert")])
    assert [str(i) for i in err.value.issues] == [
        "Secret web-cert: holds no tls_certificate or validation_context"]
