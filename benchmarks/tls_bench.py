"""HTTPS through meshpy and through Envoy: keep-alive requests, full and resumed TLS handshakes, and
HTTP/2 over TLS, as ratios (make bench-tls, about 5 minutes; docs/tls-benchmarks.md has the figures).

    python benchmarks/tls_bench.py [--rounds 3] [--duration 5] [--scenarios ...] [--no-pin] [--out DIR]
    python benchmarks/tls_bench.py client --port P --mode full|resumed [--tls 1.3] ...  # Python client
    python benchmarks/tls_bench.py floor [N]   # the ssl module's own server CPU per handshake (no proxy)

Contenders: meshpy on uvloop (one process) and Envoy with --concurrency 1, each alone on the proxy CPU
(1), started afresh every round, rounds interleaved (meshpy, Envoy, meshpy, Envoy...). Both terminate
TLS on two listeners, one with an ECDSA P-256 leaf certificate and one with an RSA-2048 leaf (the same
files for both, from a throw-away CA made here), ALPN h2 and http/1.1, session tickets on (meshpy YAML
`tls: {cert, key, session_tickets: true}`; Envoy's DownstreamTlsContext defaults, where stateless and
stateful resumption are on), and serve plaintext on a third listener; all forward in plaintext HTTP/1.1
to the suite's origin (nginx, or meshpy's demo upstream) on the load CPU (0), where every client runs.

Scenarios (each DURATION seconds, ~100 B answers):
- keepalive-plain: wrk -t1 -c50 without TLS, the baseline for what TLS adds to a request.
- keepalive-<cert>: wrk -t1 -c50 over TLS 1.3 (wrk offers it, both servers pick it), HTTP/1.1
  keep-alive; req/s and the proxy's CPU microseconds per request.
- full-<cert>: every request on a new TLS 1.3 connection that offers no session, so the server does
  the full handshake (certificate signature, key exchange), then one GET with Connection: close. The
  client is benchmarks/tls_client.c (16 threads, OpenSSL, no certificate check, which costs the
  server nothing), compiled here with cc; without a compiler or libssl-dev, a Python client (this
  file's `client` subcommand, threads and the ssl module) that costs the load CPU more per handshake.
  wrk cannot be used: it *does* resume. It SSL_shutdown()s and SSL_clear()s a closed connection's SSL
  object and reuses it, and SSL_clear keeps the session, so every reconnect offers the last ticket;
  with `Connection: close` nearly all of wrk's handshakes are resumptions (wrkclose-ecdsa shows it).
- resumed-tls13: the same client, each thread offering the ticket of its previous connection (TLS 1.3
  PSK with ECDHE, what TLS 1.3 stacks do), on the ECDSA listener (a resumption signs nothing).
- resumed-tls12: the same with TLS 1.2 and no ticket extension, so the servers resume from their
  session-ID caches (Envoy's stateful resumption, OpenSSL's server-side cache in meshpy).
- wrkclose-ecdsa: wrk -t1 -c16 -H 'Connection: close', what performance-anchors.md calls full
  handshakes: one new connection per request, resumed by wrk as said above.
- h2-ecdsa: h2load -c4 -m10 over TLS (ALPN h2), GET /hello to the HTTP/1.1 origin.

Every run reads the server's own TLS counters before and after (meshpy's /stats/prometheus
meshpy_downstream_tls_{handshakes,sessions_reused}_total, Envoy's listener.<name>.ssl.{handshake,
session_reused}), so each handshake figure comes with the share that really resumed; a "full" run in
which the server resumed anything, or a "resumed" one in which it resumed less than 90%, is flagged and
left out. The proxy's CPU time over the run (utime and stime from /proc, kept apart) gives its CPU per
request or per handshake, and 1e6 / that is what one core of it can do: the figure the targets are
judged on, because the clients share the load CPU with the origin and can be what limits the measured
rate (the proxy's busy share says when; the handshake clients cost about as much as the servers).

Targets (the TLS issue): keep-alive HTTPS at least Envoy's requests per core; full handshakes at least
half Envoy's per core.

Writes benchmarks/results/tls-<date>-<commit>.json (every run) and a Markdown table beside it (.md),
also printed. benchmarks/run.py's full suite runs a shorter version (tls_bench.suite) and writes
tls-<date>-<commit>-suite.json and .md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import http.client
import json
import os
import re
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import tools
from contenders import HCM_TYPE, Origin, nginx_build_options, python_env, start_origin
from tools import Proc, Procs, free_port, http_status

RESULTS = tools.ROOT / "benchmarks" / "results"
CERTS = ("ecdsa", "rsa")
PLAIN = "plain"  # a listener without TLS beside them, for what TLS adds to a keep-alive request
SNI = "bench.meshpy.test"
TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3"
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
# Targets of the TLS issue, as meshpy's share of Envoy's per-core figure.
TARGETS = {"keepalive": 1.0, "full": 0.5}
# A "resumed" run whose server resumed less than this share of its handshakes is flagged.
RESUMED_MIN = 0.9


# --- certificates -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Leaf:
    cert: Path
    key: Path


def make_certs(directory: Path) -> tuple[Path, dict[str, Leaf]]:
    """A throw-away CA (ECDSA P-256) and two leaves for SNI, one ECDSA P-256 and one RSA-2048; keys
    0600, as meshpy wants them. Returns (the CA certificate, {"ecdsa": ..., "rsa": ...})."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.x509.oid import NameOID

    directory.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)

    def write(name: str, data: bytes, mode: int) -> Path:
        path = directory / name
        path.write_bytes(data)
        path.chmod(mode)
        return path

    def key_pem(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
        return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "meshpy TLS benchmark CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    ca_path = write("ca.pem", ca.public_bytes(serialization.Encoding.PEM), 0o644)
    leaves: dict[str, Leaf] = {}
    for kind in CERTS:
        key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey = (
            ec.generate_private_key(ec.SECP256R1()) if kind == "ecdsa"
            else rsa.generate_private_key(65537, 2048))
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, SNI)]))
                .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.SubjectAlternativeName([x509.DNSName(SNI)]), critical=False)
                .sign(ca_key, hashes.SHA256()))
        leaves[kind] = Leaf(write(f"{kind}.pem", cert.public_bytes(serialization.Encoding.PEM), 0o644),
                            write(f"{kind}.key", key_pem(key), 0o600))
    return ca_path, leaves


# --- the two contenders ---------------------------------------------------------------------------------

def meshpy_config(admin: int, ports: dict[str, int], leaves: dict[str, Leaf], origin: int) -> str:
    listeners = "".join(f"""
  - name: {kind}
    address: 127.0.0.1:{ports[kind]}
    tls: {{cert: {leaves[kind].cert}, key: {leaves[kind].key}, session_tickets: true}}
    routes: [{{match: /, cluster: origin}}]""" for kind in CERTS)
    listeners += f"""
  - name: {PLAIN}
    address: 127.0.0.1:{ports[PLAIN]}
    routes: [{{match: /, cluster: origin}}]"""
    return f"""# Generated by benchmarks/tls_bench.py.
admin: 127.0.0.1:{admin}
drain_time: 0s
grace_time: 1s
listeners:{listeners}
clusters:
  origin: 127.0.0.1:{origin}
"""


def envoy_config(admin: int, ports: dict[str, int], leaves: dict[str, Leaf], origin: int) -> str:
    """The bootstrap as JSON (which is YAML): a listener per certificate, named and stat-prefixed by
    it, so that its counters are listener.<cert>.ssl.*."""
    def addr(port: int) -> dict[str, Any]:
        return {"socket_address": {"address": "127.0.0.1", "port_value": port}}

    hcm = {"name": "envoy.filters.network.http_connection_manager", "typed_config": {
        "@type": HCM_TYPE, "stat_prefix": "https", "codec_type": "AUTO",
        "route_config": {"name": "local", "virtual_hosts": [{
            "name": "all", "domains": ["*"], "routes": [{"match": {"prefix": "/"},
                                                         "route": {"cluster": "origin"}}]}]},
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}}]}}
    listeners = [{
        "name": kind, "stat_prefix": kind, "address": addr(ports[kind]),
        "filter_chains": [{
            "transport_socket": {"name": "envoy.transport_sockets.tls", "typed_config": {
                "@type": f"{TLS}.DownstreamTlsContext",
                "common_tls_context": {
                    "tls_certificates": [{"certificate_chain": {"filename": str(leaves[kind].cert)},
                                          "private_key": {"filename": str(leaves[kind].key)}}],
                    "alpn_protocols": ["h2", "http/1.1"]}}},
            "filters": [hcm]}]} for kind in CERTS]
    listeners.append({"name": PLAIN, "stat_prefix": PLAIN, "address": addr(ports[PLAIN]),
                      "filter_chains": [{"filters": [hcm]}]})
    boot = {"admin": {"address": addr(admin)},
            "static_resources": {"listeners": listeners, "clusters": [{
                "name": "origin", "type": "STATIC", "connect_timeout": "1s",
                "load_assignment": {"cluster_name": "origin", "endpoints": [
                    {"lb_endpoints": [{"endpoint": {"address": addr(origin)}}]}]}}]}}
    return "# Generated by benchmarks/tls_bench.py.\n" + json.dumps(boot, indent=1) + "\n"


@dataclass
class Contender:
    name: str  # meshpy | envoy
    envoy: str | None = None  # the binary, for Envoy
    base_id: int = 0
    admin: int = 0
    ports: dict[str, int] = field(default_factory=dict)
    proc: Proc | None = None

    @property
    def pids(self) -> list[int]:
        return [] if self.proc is None else [self.proc.pid]

    def start(self, procs: Procs, workdir: Path, leaves: dict[str, Leaf], origin: Origin,
              cpu: int | None) -> float:
        """Starts the proxy pinned to `cpu`; returns seconds until /ready."""
        self.admin = free_port()
        self.ports = {kind: free_port() for kind in (*CERTS, PLAIN)}
        log = workdir / f"{self.name}.log"
        if self.envoy is None:
            conf = workdir / "meshpy-tls.yaml"
            conf.write_text(meshpy_config(self.admin, self.ports, leaves, origin.port))
            argv = [sys.executable, "-m", "meshpy", "run", "-c", str(conf), "--loop", "uvloop",
                    "--drain-time", "0", "--grace-time", "1", "--log-level", "warning"]
            self.proc = procs.start(Proc(self.name, argv, log, cpu=cpu, env=python_env()))
        else:
            conf = workdir / "envoy-tls.yaml"
            conf.write_text(envoy_config(self.admin, self.ports, leaves, origin.port))
            argv = [self.envoy, "-c", str(conf), "--concurrency", "1", "--disable-hot-restart",
                    "--base-id", str(self.base_id), "-l", "warning"]
            self.proc = procs.start(Proc(self.name, argv, log, cpu=cpu))
        admin = self.admin
        return self.proc.wait_until(lambda: http_status(admin, "/ready") == 200)

    def stop(self, procs: Procs) -> None:
        if self.proc is not None:
            procs.stop(self.proc)
            self.proc = None

    def tls_counters(self) -> dict[str, dict[str, int]]:
        """{listener: {"handshakes": n, "reused": n, "version <v>": n, "cipher <c>": n}} from the
        admin endpoint; meshpy's and Envoy's names mapped to the same keys."""
        out: dict[str, dict[str, int]] = {kind: {"handshakes": 0, "reused": 0} for kind in CERTS}
        if self.envoy is None:
            text = admin_get(self.admin, "/stats/prometheus")
            for m in re.finditer(r'^meshpy_downstream_tls_(handshakes|sessions_reused|ciphers)_total'
                                 r'\{([^}]*)\} ([\d.e+]+)$', text, re.MULTILINE):
                labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2)))
                counters = out.get(labels.get("listener", ""))
                if counters is None:
                    continue
                n = int(float(m.group(3)))
                if m.group(1) == "handshakes":
                    counters["handshakes"] += n
                    counters[f"version {labels.get('version')}"] = n
                elif m.group(1) == "sessions_reused":
                    counters["reused"] += n
                else:
                    counters[f"cipher {labels.get('cipher')}"] = n
            return out
        text = admin_get(self.admin, "/stats?filter=^listener%5C.(ecdsa%7Crsa)%5C.ssl%5C.")
        for m in re.finditer(r"^listener\.(\w+)\.ssl\.([\w.\-]+): (\d+)$", text, re.MULTILINE):
            counters = out.get(m.group(1))
            if counters is None:
                continue
            name, n = m.group(2), int(m.group(3))
            if name == "handshake":
                counters["handshakes"] = n
            elif name == "session_reused":
                counters["reused"] = n
            elif name.startswith("versions.") and n:
                counters[f"version {name.removeprefix('versions.')}"] = n
            elif name.startswith("ciphers.") and n:
                counters[f"cipher {name.removeprefix('ciphers.')}"] = n
        return out


def warm_up(contender: Contender, requests: int = 5) -> None:
    """A few HTTPS requests on each listener, so that the upstream pool and anything made lazily exist
    before the first measurement (and a listener that does not answer fails here, plainly)."""
    for kind in CERTS:
        conn = http.client.HTTPSConnection("127.0.0.1", contender.ports[kind], timeout=5,
                                           context=client_context("1.3"))
        try:
            for _ in range(requests):
                conn.request("GET", "/hello", headers={"Host": SNI})
                resp = conn.getresponse()
                resp.read()
                if resp.status != 200:
                    raise RuntimeError(f"{contender.name} {kind}: answer {resp.status}")
        finally:
            conn.close()


def admin_get(port: int, path: str) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        body = resp.read().decode()
        if resp.status != 200:
            raise RuntimeError(f"admin {path}: {resp.status} {body[:200]}")
        return body
    finally:
        conn.close()


def counters_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)}


# --- scenarios --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Scenario:
    name: str
    kind: str  # keepalive | full | resumed | wrkclose | h2
    cert: str
    title: str
    tls: str = "1.3"  # what the client offers (the handshake client only)
    connections: int = 16

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "cert": self.cert, "title": self.title,
                "tls": self.tls, "connections": self.connections}


SCENARIOS = (
    Scenario("keepalive-plain", "plaintext", PLAIN, "HTTP keep-alive without TLS, wrk -c50 (baseline)",
             connections=50),
    Scenario("keepalive-ecdsa", "keepalive", "ecdsa", "HTTPS keep-alive, wrk -c50, TLS 1.3, ECDSA",
             connections=50),
    Scenario("keepalive-rsa", "keepalive", "rsa", "HTTPS keep-alive, wrk -c50, TLS 1.3, RSA-2048",
             connections=50),
    Scenario("full-ecdsa", "full", "ecdsa", "full TLS 1.3 handshake per request, ECDSA P-256"),
    Scenario("full-rsa", "full", "rsa", "full TLS 1.3 handshake per request, RSA-2048"),
    Scenario("resumed-tls13", "resumed", "ecdsa", "resumed TLS 1.3 handshake (ticket) per request"),
    Scenario("resumed-tls12", "resumed", "ecdsa", "resumed TLS 1.2 handshake (session ID) per request",
             tls="1.2"),
    Scenario("wrkclose-ecdsa", "wrkclose", "ecdsa", "wrk -c16 Connection: close, ECDSA (wrk resumes)"),
    Scenario("h2-ecdsa", "h2", "ecdsa", "HTTP/2 over TLS, h2load -c4 -m10, ECDSA", connections=4),
)
SUITE_SCENARIOS = ("keepalive-plain", "keepalive-ecdsa", "full-ecdsa", "full-rsa", "resumed-tls13",
                   "h2-ecdsa")


@dataclass(frozen=True)
class Settings:
    duration: float = 5.0
    rounds: int = 3
    scenarios: tuple[str, ...] = tuple(s.name for s in SCENARIOS)
    h2_streams: int = 10
    client: str | None = None  # the compiled tls_client.c; None: the Python client

    def chosen(self) -> list[Scenario]:
        return [s for s in SCENARIOS if s.name in self.scenarios]


def measure(scn: Scenario, contender: Contender, origin: Origin, settings: Settings,
            load_cpu: int | None) -> dict[str, Any]:
    """One run: the proxy's CPU and TLS counters around the load tool."""
    port = contender.ports[scn.cert]
    before, cpu0 = contender.tls_counters().get(scn.cert, {}), cpu_split(contender.pids)
    try:
        out = drive(scn, port, origin.paths["small"], settings, load_cpu)
    except (RuntimeError, tools.WrkParseError, OSError, ValueError) as exc:
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    user, system = (b - a for a, b in zip(cpu0, cpu_split(contender.pids), strict=True))
    cpu_s = user + system
    tls = counters_delta(before, contender.tls_counters().get(scn.cert, {}))
    n = out["requests"]
    out.update(cpu_s=round(cpu_s, 3), tls=tls, cpu_us=round(cpu_s * 1e6 / n, 2) if n else None,
               user_us=round(user * 1e6 / n, 2) if n else None,
               sys_us=round(system * 1e6 / n, 2) if n else None,
               cpu_busy=round(cpu_s / out["duration_s"], 3) if out["duration_s"] else None,
               handshakes=tls.get("handshakes", 0), reused=tls.get("reused", 0))
    out["per_core"] = round(1e6 / out["cpu_us"]) if out["cpu_us"] else None
    out["reused_share"] = round(out["reused"] / out["handshakes"], 4) if out["handshakes"] else None
    problems = []
    if n == 0:
        problems.append("nothing completed")
    elif out["errors"] > n // 1000:
        problems.append(f"{out['errors']} errors in {n} requests")
    if scn.kind == "full" and out["reused"]:
        problems.append(f"the server resumed {out['reused']} of {out['handshakes']} handshakes")
    if scn.kind == "resumed" and (out["reused_share"] or 0) < RESUMED_MIN:
        problems.append(f"the server resumed only {out['reused']} of {out['handshakes']} handshakes")
    out["ok"] = not problems
    out["error"] = "; ".join(problems) or None
    return out


def cpu_split(pids: Sequence[int]) -> tuple[float, float]:
    """(user, system) CPU seconds of the processes, from /proc/PID/stat (tools.cpu_seconds sums them)."""
    user = system = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            stat = Path(f"/proc/{pid}/stat").read_text()
            fields = stat[stat.rindex(")") + 2:].split()
            user, system = user + int(fields[11]), system + int(fields[12])
    return user / tools.CLK_TCK, system / tools.CLK_TCK


def drive(scn: Scenario, port: int, path: str, settings: Settings, cpu: int | None) -> dict[str, Any]:
    url = f"{'http' if scn.cert == PLAIN else 'https'}://127.0.0.1:{port}{path}"
    seconds = max(1, round(settings.duration))
    if scn.kind in ("plaintext", "keepalive", "wrkclose"):
        argv = tools.wrk_argv(url, scn.connections, seconds)
        if scn.kind == "wrkclose":
            argv = [*argv[:-1], "-H", "Connection: close", url]
        rc, text = tools.run_tool(argv, timeout=seconds + 30, cpu=cpu)
        if rc != 0:
            raise RuntimeError(f"wrk exited {rc}: {text.strip()[-300:]}")
        w = tools.parse_wrk(text)
        return {"rps": w["rps"], "requests": w["requests"], "duration_s": w["duration_s"],
                "errors": w["errors"] + w["non_2xx"], "argv": " ".join(argv), "raw": text}
    if scn.kind == "h2":
        return h2load(url, scn.connections, settings.h2_streams, seconds, cpu)
    if settings.client is not None:
        argv = [settings.client, str(port), path, scn.kind, scn.tls, str(scn.connections),
                str(settings.duration), SNI]
    else:
        argv = [sys.executable, str(Path(__file__).resolve()), "client", "--port", str(port), "--path",
                path, "--mode", scn.kind, "--tls", scn.tls, "--connections", str(scn.connections),
                "--duration", str(settings.duration)]
    rc, text = tools.run_tool(argv, timeout=settings.duration + 30, cpu=cpu)
    if rc != 0:
        raise RuntimeError(f"the handshake client exited {rc}: {text.strip()[-500:]}")
    got = json.loads(text.strip().splitlines()[-1])
    return {"rps": got["rate"], "requests": got["completed"], "duration_s": got["elapsed"],
            "errors": got["errors"], "client_reused": got["reused"], "client": got}


_H2_DONE = re.compile(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
                      r"(\d+) errored")
_H2_TIME = re.compile(r"finished in ([\d.]+)(ms|s), ([\d.]+) req/s")


def h2load(url: str, connections: int, streams: int, seconds: int, cpu: int | None) -> dict[str, Any]:
    argv = ["h2load", "-t1", f"-c{connections}", f"-m{streams}", "-D", str(seconds), url]
    rc, text = tools.run_tool(argv, timeout=seconds + 30, cpu=cpu)
    done, took = _H2_DONE.search(text), _H2_TIME.search(text)
    if rc != 0 or done is None or took is None:
        raise RuntimeError(f"h2load exited {rc}: {text.strip()[-500:]}")
    if "h2" not in text.split("Application protocol:")[-1].split("\n")[0]:
        raise RuntimeError(f"h2load did not negotiate h2: {text.strip()[-500:]}")
    elapsed = float(took.group(1)) / (1000 if took.group(2) == "ms" else 1)
    completed = int(done.group(4))
    return {"rps": completed / elapsed if elapsed else 0.0, "requests": completed, "duration_s": elapsed,
            "errors": int(done.group(5)) + int(done.group(6)), "argv": " ".join(argv), "raw": text}


# --- the handshake client (a subprocess on the load CPU) --------------------------------------------

def build_client(workdir: Path) -> tuple[str | None, str]:
    """Compiles tls_client.c into `workdir`; (its path, "") or (None, why not) when there is no C
    compiler or no OpenSSL headers, and the Python client below is used instead."""
    source = Path(__file__).resolve().parent / "tls_client.c"
    binary = workdir / "tls_client"
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        return None, "no C compiler (cc)"
    done = subprocess.run([cc, "-O2", "-o", str(binary), str(source), "-lssl", "-lcrypto", "-lpthread"],
                          capture_output=True, text=True, timeout=120, check=False)
    if done.returncode != 0:
        return None, f"cc failed (libssl-dev missing?): {(done.stdout + done.stderr).strip()[-300:]}"
    return str(binary), ""


def client_context(tls: str) -> ssl.SSLContext:
    """No certificate check (it costs the client, not the server); one TLS version; for TLS 1.2 no
    ticket extension, so a resumption can only come from the server's session-ID cache."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    version = ssl.TLSVersion.TLSv1_3 if tls == "1.3" else ssl.TLSVersion.TLSv1_2
    ctx.minimum_version = ctx.maximum_version = version
    if tls == "1.2":
        ctx.options |= ssl.OP_NO_TICKET
    return ctx


def run_client(port: int, path: str, mode: str, tls: str, connections: int, duration: float,
               timeout: float = 5.0) -> dict[str, Any]:
    """`connections` threads, each looping: connect, TLS handshake (offering its previous session when
    `mode` is "resumed"), one GET with Connection: close, the answer read to the end, close. Counts what
    completed, failed and (by the client's own account) resumed within `duration` seconds."""
    ctx = client_context(tls)
    request = (f"GET {path} HTTP/1.1\r\nHost: {SNI}\r\nUser-Agent: meshpy-tls-bench\r\n"
               "Connection: close\r\n\r\n").encode()
    lock = threading.Lock()
    totals = {"completed": 0, "errors": 0, "reused": 0}
    errors: dict[str, int] = {}
    start = time.perf_counter()
    deadline = start + duration
    last = [start]

    def worker() -> None:
        session: ssl.SSLSession | None = None
        done = failed = reused = 0
        while time.perf_counter() < deadline:
            try:
                raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
                # Else Nagle holds the request back behind the client's Finished until an ACK, which
                # the server may delay by 40 ms.
                raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                with ctx.wrap_socket(raw, server_hostname=SNI, session=session) as conn:  # owns the fd
                    conn.sendall(request)
                    answer = bytearray()
                    while chunk := conn.recv(65536):
                        answer += chunk
                    if not answer.startswith(b"HTTP/1.1 200"):
                        raise RuntimeError(f"answer {bytes(answer[:40])!r}")
                    if mode == "resumed":
                        session = conn.session  # the newest ticket (TLS 1.3) or the session (1.2)
                    reused += bool(conn.session_reused)
                    done += 1
            except (OSError, RuntimeError) as exc:
                failed += 1
                with lock:
                    key = f"{type(exc).__name__}: {exc}"[:120]
                    errors[key] = errors.get(key, 0) + 1
                time.sleep(0.01)  # against a refused port a worker would spin the load CPU
        with lock:
            totals["completed"] += done
            totals["errors"] += failed
            totals["reused"] += reused
            last[0] = max(last[0], time.perf_counter())

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(duration + timeout + 5)
    elapsed = last[0] - start
    return {**totals, "elapsed": round(elapsed, 3),
            "rate": round(totals["completed"] / elapsed, 1) if elapsed else 0.0, "mode": mode, "tls": tls,
            "connections": connections, "client": "python", "error_kinds": errors,
            "openssl": ssl.OPENSSL_VERSION}


# --- the floor: the ssl module's own cost per handshake, without sockets or proxy --------------------------

def handshake_floor(leaves: dict[str, Leaf], kind: str, tls: str, resume: bool, n: int) -> tuple[float, int]:
    """Server-side CPU microseconds of one handshake in Python's ssl (this interpreter's OpenSSL) over
    memory BIOs, with one small record each way and the server's close_notify, as a proxy has them; the
    client's work is left out by timing only the server's calls. Returns (µs, handshakes resumed)."""
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(leaves[kind].cert, leaves[kind].key)
    client = client_context(tls)
    session: ssl.SSLSession | None = None
    spent, reused = 0.0, 0

    def timed(call: Callable[[], object]) -> bool:
        """Runs a server call on the clock; False when it wants more bytes from the client."""
        nonlocal spent
        t = time.thread_time()
        try:
            call()
        except ssl.SSLWantReadError:
            return False
        finally:
            spent += time.thread_time() - t
        return True

    def answer(srv: ssl.SSLObject) -> None:
        srv.read(100)
        srv.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")

    for _ in range(n):
        s_in, s_out, c_in, c_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
        t = time.thread_time()
        srv = server.wrap_bio(s_in, s_out, server_side=True)
        spent += time.thread_time() - t
        cli = client.wrap_bio(c_in, c_out, server_hostname=SNI, session=session if resume else None)
        client_done = server_done = False
        while not (client_done and server_done):
            if not client_done:
                try:
                    cli.do_handshake()
                    client_done = True
                except ssl.SSLWantReadError:
                    pass
            s_in.write(c_out.read())
            server_done = server_done or timed(srv.do_handshake)
            c_in.write(s_out.read())
        cli.write(b"GET / HTTP/1.1\r\n\r\n")
        s_in.write(c_out.read())
        timed(lambda: answer(srv))  # noqa: B023 (called at once, inside the iteration)
        c_in.write(s_out.read())
        cli.read(100)  # the answer, and with TLS 1.3 the tickets before it
        timed(srv.unwrap)  # the close_notify a proxy sends when it closes
        session = cli.session
        reused += bool(srv.session_reused)
    return spent / n * 1e6, reused


def floor_main(n: int) -> int:
    with tempfile.TemporaryDirectory(prefix="meshpy-tls-floor-") as tmp:
        _, leaves = make_certs(Path(tmp))
        for kind, tls, resume in (("ecdsa", "1.3", False), ("rsa", "1.3", False), ("ecdsa", "1.3", True),
                                  ("ecdsa", "1.2", True)):
            us, reused = handshake_floor(leaves, kind, tls, resume, n)
            print(f"{kind:5} TLS {tls} {'resumed' if resume else 'full   '}: {us:6.1f} us of server CPU per "
                  f"handshake in Python's ssl ({ssl.OPENSSL_VERSION}; {reused} of {n} resumed)", flush=True)
    return 0


# --- rounds, summary, report ----------------------------------------------------------------------------

def run_rounds(settings: Settings, contenders: Sequence[Contender], procs: Procs, workdir: Path,
               origin: Origin, proxy_cpu: int | None, load_cpu: int | None,
               save: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Every scenario on every contender, interleaved over rounds, each contender started afresh per
    round; returns {"config", "runs", "summary"}."""
    _, leaves = make_certs(workdir / "pki")
    chosen = settings.chosen()
    why = ""
    if settings.client is None and any(s.kind in ("full", "resumed") for s in chosen):
        client, why = build_client(workdir)
        settings = replace(settings, client=client)
        if client is None:
            print(f"  tls: the handshake client is Python's ({why}); it may set the handshake rates",
                  flush=True)
    out: dict[str, Any] = {"config": {"duration_s": settings.duration, "rounds": settings.rounds,
                                      "handshake_client": "Python (tls_bench.py client)" if settings.client
                                      is None else "C (benchmarks/tls_client.c)",
                                      "handshake_client_note": why,
                                      "scenarios": [s.describe() for s in chosen], "sni": SNI,
                                      "h2_streams": settings.h2_streams, "origin": origin.kind,
                                      "targets": TARGETS},
                           "runs": []}
    for rnd in range(1, settings.rounds + 1):
        for contender in contenders:
            try:
                ready = contender.start(procs, workdir, leaves, origin, proxy_cpu)
                warm_up(contender)
            except (RuntimeError, TimeoutError, OSError, http.client.HTTPException) as exc:
                contender.stop(procs)
                for scn in chosen:
                    out["runs"].append({"round": rnd, "contender": contender.name, "scenario": scn.name,
                                        "ok": False, "error": f"did not start or serve: {exc}"})
                print(f"  tls, round {rnd} {contender.name}: did not start or serve: {exc}", flush=True)
                continue
            try:
                for scn in chosen:
                    time.sleep(0.3)  # the previous run's connections close before the next one starts
                    run = measure(scn, contender, origin, settings, load_cpu)
                    out["runs"].append({"round": rnd, "contender": contender.name, "scenario": scn.name,
                                        "ready_ms": round(ready * 1000), **run})
                    print(f"  tls, round {rnd} {contender.name:7} {scn.name:16} {line(run)}", flush=True)
                    if save is not None:
                        save(out)
            finally:
                contender.stop(procs)
    out["summary"] = summarize(out["runs"], chosen, [c.name for c in contenders])
    if save is not None:
        save(out)
    return out


def line(run: dict[str, Any]) -> str:
    text = ""
    if run.get("rps") is not None:
        text = f"{run['rps']:>8,.0f}/s, {run.get('cpu_us') or 0:7.1f} us CPU each " \
               f"({run.get('per_core') or 0:,}/core, CPU {run.get('cpu_busy') or 0:.0%} busy)"
        if run.get("handshakes"):
            text += f", {run['handshakes']:,} handshakes, {run.get('reused_share') or 0:.0%} resumed"
    if not run.get("ok"):
        text += f"  FAILED: {run.get('error')}"
    return text


def summarize(runs: list[dict[str, Any]], chosen: list[Scenario], names: list[str]) -> dict[str, Any]:
    """Medians over the good rounds per scenario and contender, and meshpy's ratios to Envoy."""
    summary: dict[str, Any] = {}
    for scn in chosen:
        per: dict[str, Any] = {"title": scn.title, "kind": scn.kind}
        for name in names:
            good = [r for r in runs if r["scenario"] == scn.name and r["contender"] == name and r.get("ok")]
            if not good:
                continue
            per[name] = {key: round(statistics.median(r[key] for r in good if r.get(key) is not None), 4)
                         for key in ("rps", "cpu_us", "user_us", "sys_us", "per_core", "cpu_busy",
                                     "reused_share")
                         if any(r.get(key) is not None for r in good)}
            per[name]["rounds"] = len(good)
        if "meshpy" in per and "envoy" in per:
            m, e = per["meshpy"], per["envoy"]
            per["ratio_rps"] = round(m["rps"] / e["rps"], 3) if e.get("rps") else None
            per["ratio_per_core"] = round(m["per_core"] / e["per_core"], 3) if e.get("per_core") else None
            target = TARGETS.get(scn.kind)
            if target is not None and per["ratio_per_core"] is not None:
                per["target"] = target
                per["target_met"] = per["ratio_per_core"] >= target
        summary[scn.name] = per
    return summary


def markdown(result: dict[str, Any]) -> str:
    tls = result["tls"]
    config = tls["config"]
    dirty = " (dirty)" if result["dirty"] else ""
    cpus, envoy = result["cpus"], result["versions"].get("envoy")
    lines = [f"TLS benchmark {result['date']}, commit {result['commit']}{dirty}: meshpy (uvloop, one "
             f"process) and Envoy {envoy} (--concurrency 1) on CPU {cpus['proxy']}; "
             f"clients and the {config['origin']} origin on CPU {cpus['load']}; median of "
             f"{config['rounds']} interleaved rounds of {config['duration_s']:g} s; handshake client: "
             f"{config.get('handshake_client')}. CPU µs = the proxy's CPU time per request or handshake "
             "(user + system); per core = 1e6 / that; busy = the proxy's CPU time over the run's.", "",
             "| scenario | meshpy /s | Envoy /s | ratio | meshpy CPU µs (user + sys) "
             "| Envoy CPU µs (user + sys) | meshpy per core | Envoy per core | per-core ratio "
             "| busy meshpy / Envoy | resumed meshpy / Envoy | target |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]

    def num(d: dict[str, Any], key: str, fmt: str) -> str:
        return format(d[key], fmt) if d.get(key) is not None else "—"

    def cpu(d: dict[str, Any]) -> str:
        if d.get("user_us") is None or d.get("sys_us") is None:
            return num(d, "cpu_us", ",.1f")
        return f"{d['cpu_us']:,.1f} ({d['user_us']:,.1f} + {d['sys_us']:,.1f})"

    for per in tls["summary"].values():
        m, e = per.get("meshpy", {}), per.get("envoy", {})
        ratio = num(per, "ratio_rps", ".2f")
        core = num(per, "ratio_per_core", ".2f")
        resumed = "—" if per["kind"] in ("plaintext", "keepalive", "h2") else \
            f"{num(m, 'reused_share', '.0%')} / {num(e, 'reused_share', '.0%')}"
        target = "—"
        if "target_met" in per:
            target = f"≥ {per['target']:g} of Envoy per core: {'met' if per['target_met'] else 'NOT met'}"
        lines.append(f"| {per['title']} | {num(m, 'rps', ',.0f')} | {num(e, 'rps', ',.0f')} | {ratio} "
                     f"| {cpu(m)} | {cpu(e)} "
                     f"| {num(m, 'per_core', ',.0f')} | {num(e, 'per_core', ',.0f')} | {core} "
                     f"| {num(m, 'cpu_busy', '.0%')} / {num(e, 'cpu_busy', '.0%')} | {resumed} | {target} |")
    failed = [r for r in tls["runs"] if not r.get("ok")]
    if failed:
        lines += ["", f"{len(failed)} run(s) failed or were flagged and are left out of the medians:"]
        lines += [f"- round {r['round']} {r['contender']} {r['scenario']}: {r.get('error')}" for r in failed]
    return "\n".join(lines) + "\n"


def suite(procs: Procs, workdir: Path, origin: Origin, envoy: str | None, proxy_cpu: int | None,
          load_cpu: int | None, rounds: int, duration: float | None,
          save: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """What benchmarks/run.py's full suite runs: the scenarios the targets are about and the resumed
    and HTTP/2 ones, 3 s each (about 2 minutes with 2 rounds)."""
    settings = Settings(duration=duration or 3.0, rounds=rounds, scenarios=SUITE_SCENARIOS)
    return run_rounds(settings, contenders(envoy), procs, workdir, origin, proxy_cpu, load_cpu, save)


def contenders(envoy: str | None) -> list[Contender]:
    out = [Contender("meshpy")]
    if envoy is not None:
        out.append(Contender("envoy", envoy=envoy, base_id=20_000 + os.getpid() % 40_000))
    return out


def write_outputs(result: dict[str, Any], out_dir: Path, suffix: str = "") -> tuple[Path, Path]:
    """tls-<date>-<commit><suffix>.json and .md in `out_dir` (run.py's shorter suite passes "-suite", so
    that it does not overwrite a `make bench-tls` result of the same commit)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"tls-{result['date']}-{result['commit']}{suffix}.json"
    path.write_text(json.dumps(result, indent=1))
    md = path.with_suffix(".md")
    md.write_text(markdown(result))
    return path, md


def header(envoy: str | None, proxy_cpu: int | None, load_cpu: int | None) -> dict[str, Any]:
    commit, dirty = tools.git_commit()
    now = dt.datetime.now(dt.UTC)
    return {"benchmark": "tls", "schema": 1, "started": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "date": now.strftime("%Y-%m-%d"), "commit": commit, "dirty": dirty,
            "machine": tools.machine_info(), "versions": {**tools.tool_versions(envoy),
                                                          "openssl_python": ssl.OPENSSL_VERSION},
            "cpus": {"proxy": proxy_cpu, "load": load_cpu}}


def run(args: argparse.Namespace) -> dict[str, Any]:
    envoy = None if args.no_envoy else tools.envoy_binary()
    needed = ["wrk", "h2load"] + ([] if args.no_envoy else ["envoy"])
    missing = tools.missing_tools(needed, envoy)
    if missing:
        sys.exit("tls_bench: missing " + "; ".join(missing) + " (`make bench-tls` installs them as root)")
    proxy_cpu, load_cpu = (None, None) if args.no_pin else (args.proxy_cpu, args.load_cpu)
    settings = Settings(duration=args.duration, rounds=args.rounds, scenarios=tuple(args.scenarios))
    result = header(envoy, proxy_cpu, load_cpu)
    out_dir = Path(args.out) if args.out else RESULTS

    def save(tls: dict[str, Any]) -> None:
        result["tls"] = tls
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / f"tls-{result['date']}-{result['commit']}.json").write_text(json.dumps(result, indent=1))

    procs = Procs()
    with tempfile.TemporaryDirectory(prefix="meshpy-tls-") as tmp, tools.sigterm_as_exit():
        workdir = Path(tmp)
        workdir.chmod(0o755)  # nginx's worker runs as nobody and must reach the files served from here
        try:
            build = None if tools.missing_tools(["nginx"], envoy) else nginx_build_options()
            origin = start_origin(procs, workdir, load_cpu, build is not None, build or "")
            print(f"tls_bench: {settings.rounds} round(s) of {len(settings.chosen())} scenario(s), "
                  f"{settings.duration:g} s each; origin {origin.kind} on CPU {load_cpu}, proxies on CPU "
                  f"{proxy_cpu}", flush=True)
            result["tls"] = run_rounds(settings, contenders(envoy), procs, workdir, origin, proxy_cpu,
                                       load_cpu, save)
        finally:
            procs.stop_all()
    return result


def client_main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="tls_bench.py client", description=run_client.__doc__)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--path", default="/hello")
    ap.add_argument("--mode", choices=("full", "resumed"), default="full")
    ap.add_argument("--tls", choices=("1.2", "1.3"), default="1.3")
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--duration", type=float, default=5.0)
    args = ap.parse_args(argv)
    print(json.dumps(run_client(args.port, args.path, args.mode, args.tls, args.connections, args.duration)))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["client"]:
        return client_main(argv[1:])
    if argv[:1] == ["floor"]:
        return floor_main(int(argv[1]) if len(argv) > 1 else 1000)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = Settings()
    ap.add_argument("--rounds", type=int, default=defaults.rounds)
    ap.add_argument("--duration", type=float, default=defaults.duration, help="seconds per run")
    names = [s.name for s in SCENARIOS]
    ap.add_argument("--scenarios", nargs="+", default=names, choices=names)
    ap.add_argument("--proxy-cpu", type=int, default=1)
    ap.add_argument("--load-cpu", type=int, default=0)
    ap.add_argument("--no-pin", action="store_true", help="no taskset (machines with one CPU)")
    ap.add_argument("--no-envoy", action="store_true", help="meshpy alone (before/after comparisons)")
    ap.add_argument("--out", help=f"directory for the results (default {RESULTS.relative_to(tools.ROOT)})")
    args = ap.parse_args(argv)
    result = run(args)
    path, md = write_outputs(result, Path(args.out) if args.out else RESULTS)
    print(md.read_text())
    print(f"tls_bench: results in {path}, table in {md}")
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
