"""`meshpy iptables` inside a network namespace this test creates: outbound TCP lands on the outbound
port with its original destination recoverable (SO_ORIGINAL_DST), the proxy's own UID and the excluded
ports pass untouched, and --cleanup leaves no rule behind. Skipped, with the reason, where the machine
does not allow namespaces or has no iptables."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from kit import ROOT

MESHPY = [sys.executable, "-m", "meshpy"]
NS = f"meshpy-t{os.getpid()}"
PEER = f"{NS}-peer"  # the other end of the veth pair: gives NS a route out

# Inside the namespace: answer every connection with the address it was meant for.
ORIGINAL_DST_SERVER = """
import socket, struct, sys
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("0.0.0.0", int(sys.argv[1]))); srv.listen(16)
print("ready", flush=True)
while True:
    conn, _ = srv.accept()
    raw = conn.getsockopt(socket.SOL_IP, 80, 16)  # SO_ORIGINAL_DST: a sockaddr_in
    port, ip = struct.unpack("!H", raw[2:4])[0], socket.inet_ntoa(raw[4:8])
    conn.sendall(f"{ip}:{port}".encode()); conn.close()
"""
PLAIN_SERVER = """
import socket, sys
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind((sys.argv[1], int(sys.argv[2]))); srv.listen(16)
print("ready", flush=True)
while True:
    conn, _ = srv.accept(); conn.sendall(b"direct"); conn.close()
"""
CLIENT = """
import os, socket, sys
"x".encode("idna")  # load the codec now: after the UID change the stdlib may not be readable
if len(sys.argv) > 3:
    os.setgid(int(sys.argv[3])); os.setuid(int(sys.argv[3]))
try:
    s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3)
    print(s.recv(100).decode() or "(closed)")
except OSError as err:
    print(type(err).__name__)
"""


def ns(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", NS, *argv], capture_output=True, text=True, timeout=30,
                          check=False)


def _why_not() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces and iptables)"
    for tool in ("ip", "iptables-restore", "iptables-save"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    return None


@pytest.fixture(scope="module")
def netns() -> Iterator[str]:
    reason = _why_not()
    if reason is not None:
        pytest.skip(reason)
    for name in (NS, PEER):
        made = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True, check=False)
        if made.returncode != 0:
            for other in (NS, PEER):
                subprocess.run(["ip", "netns", "delete", other], capture_output=True, check=False)
            pytest.skip(f"this machine does not allow network namespaces: {made.stderr.strip()}")
    procs: list[subprocess.Popen[str]] = []
    try:
        for cmd in (["ip", "link", "set", "lo", "up"],
                    ["ip", "link", "add", "v0", "type", "veth", "peer", "name", "v1", "netns", PEER],
                    ["ip", "addr", "add", "10.77.0.1/24", "dev", "v0"], ["ip", "link", "set", "v0", "up"],
                    ["ip", "route", "add", "default", "dev", "v0"]):
            done = ns(*cmd)
            if done.returncode != 0:
                pytest.skip(f"cannot build the test network ({' '.join(cmd)}): {done.stderr.strip()}")
        for script, args in ((ORIGINAL_DST_SERVER, ["15001"]), (PLAIN_SERVER, ["10.77.0.1", "7070"])):
            p = subprocess.Popen(["ip", "netns", "exec", NS, sys.executable, "-c", script, *args],
                                 stdout=subprocess.PIPE, text=True)
            procs.append(p)
            assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        yield NS
    finally:
        for p in procs:
            p.kill()
            p.wait(10)
            if p.stdout is not None:
                p.stdout.close()
        for name in (NS, PEER):
            subprocess.run(["ip", "netns", "delete", name], capture_output=True, check=False)


def connect(host: str, port: int, uid: int | None = None) -> str:
    args = [host, str(port)] + ([str(uid)] if uid is not None else [])
    return ns(sys.executable, "-c", CLIENT, *args).stdout.strip()


def test_outbound_capture_exclusions_and_cleanup(netns: str) -> None:
    applied = ns(*MESHPY, "iptables", "--inbound-ports", "", "--exclude-outbound-ports", "7070")
    assert applied.returncode == 0, applied.stderr
    rules = ns("iptables-save", "-t", "nat").stdout
    assert "-A OUTPUT -p tcp -j MESHPY_OUTPUT" in rules
    # Any destination: the connection lands on the outbound port, which can tell where it was going.
    assert connect("10.77.9.9", 80) == "10.77.9.9:80"
    assert connect("10.77.0.1", 9999) == "10.77.0.1:9999"
    # An excluded port, and the proxy's own UID, pass untouched.
    assert connect("10.77.0.1", 7070) == "direct"
    assert connect("10.77.0.1", 9999, uid=10001) == "ConnectionRefusedError"
    # Applying again replaces the rules (no second copy).
    assert ns(*MESHPY, "iptables", "--inbound-ports", "").returncode == 0
    assert ns("iptables-save", "-t", "nat").stdout.count("-j MESHPY_OUTPUT") == 1
    assert connect("10.77.0.1", 7070) == "10.77.0.1:7070"  # no longer excluded
    # Cleanup removes every rule and chain; traffic goes where it was sent again.
    assert ns(*MESHPY, "iptables", "--cleanup").returncode == 0
    assert "MESHPY" not in ns("iptables-save", "-t", "nat").stdout
    time.sleep(0.1)
    assert connect("10.77.0.1", 7070) == "direct"


# Inside the namespace, on IPv6: what meshpy's own lookup recovers for each accepted connection.
V6_SERVER = """
import socket, sys
from meshpy.transport.listen import original_destination
srv = socket.socket(socket.AF_INET6); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
srv.bind(("::", 15001)); srv.listen(16)
print("ready", flush=True)
while True:
    conn, _ = srv.accept()
    dst = original_destination(conn)
    conn.sendall(f"{dst[0]}:{dst[1]}".encode() if dst else b"none"); conn.close()
"""


def test_ipv6_original_destination(netns: str) -> None:
    if shutil.which("ip6tables-restore") is None:
        pytest.skip("ip6tables-restore is not installed")
    if ns("ip", "-6", "addr", "add", "fd77::1/64", "dev", "v0", "nodad").returncode != 0:
        pytest.skip("IPv6 is not available in the test namespace")
    ns("ip", "-6", "route", "add", "default", "dev", "v0")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    server = subprocess.Popen(["ip", "netns", "exec", NS, sys.executable, "-c", V6_SERVER],
                              stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        applied = ns(*MESHPY, "iptables", "--ipv6", "--inbound-ports", "")
        assert applied.returncode == 0, applied.stderr
        assert "-j MESHPY_OUTPUT" in ns("ip6tables-save", "-t", "nat").stdout
        assert connect("fd77::9", 443) == "fd77::9:443"
        assert connect("fd77::1", 8443) == "fd77::1:8443"
    finally:
        ns(*MESHPY, "iptables", "--cleanup", "--ipv6")
        server.kill()
        server.wait(10)
        if server.stdout is not None:
            server.stdout.close()
    assert "MESHPY" not in ns("ip6tables-save", "-t", "nat").stdout


@pytest.mark.parametrize("backend", ["nft", "legacy"])
def test_either_iptables_backend(netns: str, backend: str) -> None:
    """The same rules through iptables-nft and iptables-legacy: each lands in its own backend only."""
    other = {"nft": "legacy", "legacy": "nft"}[backend]
    if shutil.which(f"iptables-{backend}-restore") is None:
        pytest.skip(f"iptables-{backend} is not installed")
    applied = ns(*MESHPY, "iptables", "--backend", backend, "--inbound-ports", "")
    if applied.returncode != 0 and "not installed" not in applied.stderr:
        pytest.skip(f"this kernel has no {backend} backend here: {applied.stderr.strip()}")
    try:
        assert applied.returncode == 0, applied.stderr
        assert "-j MESHPY_OUTPUT" in ns(f"iptables-{backend}-save", "-t", "nat").stdout
        assert "MESHPY" not in ns(f"iptables-{other}-save", "-t", "nat").stdout
        assert connect("10.77.9.9", 80) == "10.77.9.9:80"  # captured
    finally:
        assert ns(*MESHPY, "iptables", "--backend", backend, "--cleanup").returncode == 0
    assert "MESHPY" not in ns(f"iptables-{backend}-save", "-t", "nat").stdout
    time.sleep(0.1)
    assert connect("10.77.0.1", 7070) == "direct"
