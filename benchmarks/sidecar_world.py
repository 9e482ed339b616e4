"""The world of sidecar_bench.py: two pods as network namespaces joined by a veth pair, a SPIFFE
identity for each, and a pair of sidecars in them (meshpy or Envoy, in plaintext or mutual TLS).

Both proxies run the same meshpy YAML: Envoy gets it as a bootstrap made by the control plane's export,
TLS contexts included, so the two read the very same certificate files.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tools
import yaml
from contenders import python_env
from tools import Proc, Procs

TAG = f"mpb{os.getpid() % 100000}"
CLIENT, SERVER = f"{TAG}-c", f"{TAG}-s"
CLIENT_IP, SERVER_IP, PORT = "10.79.0.1", "10.79.0.2", 8080
# The sidecars keep UID 0 and run with this GID (setpriv --regid), which the interception rules let
# pass: the key files are root's, mode 0600, and the sidecars read them as their owner.
PROXY_GID = 10001
LOAD_CPU, PROXY_CPU = 0, 1
TRUST_DOMAIN = "bench.local"
SPIFFE_ID = {pod: f"spiffe://{TRUST_DOMAIN}/ns/default/sa/{pod}" for pod in ("client", "server")}


@dataclass(frozen=True)
class Setup:
    """How a call goes from the client pod to the server pod."""

    name: str
    proxy: str | None  # "meshpy", "envoy", or None: straight to the server
    mtls: bool = False


SETUPS = {s.name: s for s in (Setup("direct", None), Setup("meshpy", "meshpy"), Setup("envoy", "envoy"),
                              Setup("meshpy-mtls", "meshpy", True), Setup("envoy-mtls", "envoy", True))}


# --- identities ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Identity:
    cert: Path
    key: Path


@dataclass(frozen=True)
class Identities:
    ca: Path
    pods: dict[str, Identity]  # "client", "server"


def make_identities(directory: Path) -> Identities:
    """A throw-away CA (ECDSA P-256) and one SVID per pod: an ECDSA P-256 leaf with an empty subject and
    the pod's SPIFFE ID as its only (critical) SAN, good for client and server auth, as Istio's are.
    Keys are 0600 and root's; certificates 0644."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    directory.mkdir(mode=0o755, parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)

    def write(name: str, data: bytes, mode: int) -> Path:
        path = directory / name
        path.write_bytes(data)
        os.chown(path, 0, 0)
        path.chmod(mode)
        return path

    def usage(ca: bool) -> x509.KeyUsage:
        return x509.KeyUsage(digital_signature=not ca, key_encipherment=not ca, key_cert_sign=ca,
                             crl_sign=ca, content_commitment=False, data_encipherment=False,
                             key_agreement=False, encipher_only=False, decipher_only=False)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, TRUST_DOMAIN),
                         x509.NameAttribute(NameOID.COMMON_NAME, "meshpy sidecar benchmark CA")])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(usage(ca=True), critical=True)
          .add_extension(ca_ski, critical=False)
          .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    ca_path = write("ca.pem", ca.public_bytes(pem), 0o644)
    pods: dict[str, Identity] = {}
    for pod, spiffe_id in SPIFFE_ID.items():
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (x509.CertificateBuilder().subject_name(x509.Name([])).issuer_name(ca_name)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(usage(ca=False), critical=True)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                      ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
                               critical=False)
                .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(spiffe_id)]),
                               critical=True)
                .sign(ca_key, hashes.SHA256()))
        key_pem = key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        pods[pod] = Identity(write(f"{pod}.pem", cert.public_bytes(pem), 0o644),
                             write(f"{pod}.key", key_pem, 0o600))
    return Identities(ca_path, pods)


# --- the sidecars' config ------------------------------------------------------------------------------

def client_sidecar(ids: Identities | None) -> dict[str, Any]:
    """The client pod's sidecar: its outbound listener finds the server's listener by the original
    destination; with `ids`, the cluster to the server calls over mutual TLS and wants the server's ID."""
    server: dict[str, Any] = {"name": "server", "endpoints": [f"{SERVER_IP}:{PORT}"]}
    if ids is not None:
        me = ids.pods["client"]
        server["tls"] = {"cert": str(me.cert), "key": str(me.key), "ca": str(ids.ca),
                         "verify_hostname": False, "subject_alt_names": [{"uri": SPIFFE_ID["server"]}]}
    return {
        "admin": "127.0.0.1:15000", "drain_time": "0s",
        "listeners": [
            {"name": "outbound", "address": "127.0.0.1:15001", "original_destination": True,
             "direction": "outbound", "protocol": "tcp", "cluster": "passthrough"},
            {"name": f"server_{PORT}", "address": f"{SERVER_IP}:{PORT}", "bind": False,
             "direction": "outbound", "generate_request_id": False,
             "routes": [{"match": "/", "cluster": "server"}]},
        ],
        "clusters": [{"name": "passthrough", "type": "original_dst"}, server],
    }


def server_sidecar(ids: Identities | None) -> dict[str, Any]:
    """The server pod's sidecar: its inbound listener hands each call on to the port it was made to;
    with `ids`, only over mutual TLS, from a client with the client's ID."""
    inbound: dict[str, Any] = {"name": "inbound", "address": "0.0.0.0:15006", "original_destination": True,
                               "direction": "inbound", "generate_request_id": False,
                               "routes": [{"match": "/", "cluster": "inbound_app"}]}
    if ids is not None:
        me = ids.pods["server"]
        inbound["tls"] = {"cert": str(me.cert), "key": str(me.key),
                          "client_certificates": {"ca": str(ids.ca),
                                                  "subject_alt_names": [{"uri": SPIFFE_ID["client"]}]}}
    return {"admin": "127.0.0.1:15000", "drain_time": "0s", "listeners": [inbound],
            "clusters": [{"name": "inbound_app", "type": "original_dst"}]}


def envoy_bootstrap(meshpy_config: dict[str, Any]) -> dict[str, Any]:
    """The meshpy config as an Envoy bootstrap: the control plane's export, with each listener's routes
    inline and each cluster's endpoints in a load_assignment (no xDS server in this run)."""
    sys.path.insert(0, str(tools.ROOT))
    from control.sources.export import export
    from control.sources.export_static import static_bootstrap
    from meshpy.model.meshpy_yaml import load_meshpy

    host, port = meshpy_config["admin"].rsplit(":", 1)
    return static_bootstrap(export(load_meshpy(meshpy_config)), (host, int(port)))


# --- the pods ---------------------------------------------------------------------------------------------

def sh(*argv: str) -> None:
    done = subprocess.run(list(argv), capture_output=True, text=True, timeout=30, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {done.stderr.strip()}")


def build_network() -> None:
    for ns in (CLIENT, SERVER):
        sh("ip", "netns", "add", ns)
    sh("ip", "-n", CLIENT, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", SERVER)
    for ns, ip in ((CLIENT, CLIENT_IP), (SERVER, SERVER_IP)):
        sh("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", "eth0")
        sh("ip", "-n", ns, "link", "set", "eth0", "up")
        sh("ip", "-n", ns, "link", "set", "lo", "up")


def remove_network() -> None:
    for ns in (CLIENT, SERVER):
        subprocess.run(["ip", "netns", "delete", ns], capture_output=True, check=False)


def in_ns(ns: str, argv: list[str]) -> list[str]:
    return ["ip", "netns", "exec", ns, *argv]


def start_sidecars(procs: Procs, work: Path, setup: Setup, ids: Identities) -> list[Proc]:
    """Rules in both pods, then a sidecar in each, running with the proxy's GID the rules let pass."""
    started: list[Proc] = []
    tls = ids if setup.mtls else None
    for ns, config in ((CLIENT, client_sidecar(tls)), (SERVER, server_sidecar(tls))):
        sh(*in_ns(ns, [sys.executable, "-m", "meshpy", "iptables", "--proxy-gid", str(PROXY_GID)]))
        if setup.proxy == "meshpy":
            path = work / f"{ns}-{setup.name}.yaml"
            path.write_text(yaml.safe_dump(config, sort_keys=False))
            argv = [sys.executable, "-m", "meshpy", "run", "-c", str(path), "--log-level", "warning"]
        else:
            path = work / f"{ns}-{setup.name}.json"
            path.write_text(json.dumps(envoy_bootstrap(config)))
            envoy = tools.envoy_binary()
            assert envoy is not None
            argv = [envoy, "-c", str(path), "--concurrency", "1", "--disable-hot-restart", "--log-level",
                    "warning", "--base-id", str(os.getpid() % 50000 + len(started) + 1)]
        proc = Proc(f"{setup.name}-{ns}", ["setpriv", f"--regid={PROXY_GID}", "--clear-groups", *argv],
                    work / f"{setup.name}-{ns}.log", cpu=PROXY_CPU, env=python_env())
        proc.argv = in_ns(ns, proc.argv)
        started.append(procs.start(proc))
    for proc, ns in zip(started, (CLIENT, SERVER), strict=True):
        proc.wait_until(lambda ns=ns: _ready(ns), timeout=30)
    return started


def _ready(ns: str) -> bool:
    done = subprocess.run(in_ns(ns, ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-m", "1",
                                     "http://127.0.0.1:15000/ready"]), capture_output=True, text=True,
                          check=False)
    return done.stdout.strip() == "200"


def admin_get(ns: str, path: str) -> str:
    """The body of a GET on the sidecar's admin in pod `ns` ("" when it does not answer 200)."""
    done = subprocess.run(in_ns(ns, ["curl", "-sf", "-m", "2", f"http://127.0.0.1:15000{path}"]),
                          capture_output=True, text=True, check=False)
    return done.stdout if done.returncode == 0 else ""


def stop_sidecars(procs: Procs, started: list[Proc]) -> None:
    for proc in started:
        procs.stop(proc)
    for ns in (CLIENT, SERVER):
        subprocess.run(in_ns(ns, [sys.executable, "-m", "meshpy", "iptables", "--cleanup"]),
                       capture_output=True, check=False, env=python_env())


def server_tls(setup: Setup) -> dict[str, int]:
    """The server sidecar's downstream TLS counters: handshakes completed (each one with a verified
    client certificate, since one is required) and handshakes failed."""
    out = {"handshakes": 0, "failures": 0}
    if setup.proxy == "meshpy":
        text = admin_get(SERVER, "/stats/prometheus")
        for kind, n in re.findall(r"^meshpy_downstream_tls_(handshakes|failures)_total\{[^}]*\} ([\d.e+]+)$",
                                  text, re.MULTILINE):
            out[kind] += int(float(n))
    elif setup.proxy == "envoy":
        text = admin_get(SERVER, "/stats?filter=%5Elistener%5C..*%5C.ssl%5C.")
        for name, n in re.findall(r"^listener\..*\.ssl\.([\w_]+): (\d+)$", text, re.MULTILINE):
            if name == "handshake":
                out["handshakes"] += int(n)
            elif name == "connection_error" or name.startswith("fail_"):
                out["failures"] += int(n)
    return out
