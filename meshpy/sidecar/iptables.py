"""`meshpy iptables`: the nat rules that send a pod's TCP through its sidecar, as Istio's and
Linkerd's init steps install them.

Outbound: every TCP connection the pod makes goes to the outbound listener (REDIRECT in OUTPUT), except
the proxy's own (its UID, or GID), loopback, and the ports and CIDRs excluded. Inbound: every TCP
connection that arrives goes to the inbound listener (REDIRECT in PREROUTING), except excluded ports (the
admin port, health probes that must reach the app directly). The listeners recover where each
connection was going with SO_ORIGINAL_DST.

The rules go in as one `iptables-restore --noflush` input, so they apply atomically and work the same
with iptables-nft and iptables-legacy; everything lives in chains of its own (MESHPY_*), so cleanup
removes exactly what was added. Applying first removes a previous set: running it twice is harmless.
"""

from __future__ import annotations

import ipaddress
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

CHAINS = ("MESHPY_INBOUND", "MESHPY_IN_REDIRECT", "MESHPY_OUTPUT", "MESHPY_REDIRECT")
# (built-in chain, our chain): the jumps that hook our chains in.
_HOOKS = (("PREROUTING", "MESHPY_INBOUND"), ("OUTPUT", "MESHPY_OUTPUT"))


class InterceptError(Exception):
    """The rules could not be installed or removed (the message says which command and why)."""


@dataclass(frozen=True)
class InterceptPlan:
    proxy_uid: int = 10001  # the image's user; its own connections are never captured
    proxy_gid: int | None = None
    outbound_port: int = 15001
    inbound_port: int = 15006
    inbound_ports: tuple[int, ...] | None = None  # None: every port; () : no inbound capture
    exclude_inbound_ports: tuple[int, ...] = (15000,)  # the admin port (readiness probes)
    exclude_outbound_ports: tuple[int, ...] = ()
    exclude_cidrs: tuple[str, ...] = ()
    ipv6: bool = False

    def __post_init__(self) -> None:
        for port in (self.outbound_port, self.inbound_port, *self.exclude_inbound_ports,
                     *self.exclude_outbound_ports, *(self.inbound_ports or ())):
            if not 0 < port < 65536:
                raise ValueError(f"port {port} is out of range")
        for cidr in self.exclude_cidrs:
            ipaddress.ip_network(cidr, strict=False)  # raises ValueError naming the bad one


def restore_input(plan: InterceptPlan, v6: bool = False) -> str:
    """The `iptables-restore --noflush` input for the nat table (`v6`: for ip6tables-restore)."""
    loopback = "::1/128" if v6 else "127.0.0.0/8"
    lines = ["*nat"] + [f":{chain} - [0:0]" for chain in CHAINS]
    add = lines.append
    # Inbound: excluded ports pass, then the listed ports (or all) go to the inbound listener.
    for port in plan.exclude_inbound_ports:
        add(f"-A MESHPY_INBOUND -p tcp --dport {port} -j RETURN")
    if plan.inbound_ports is None:
        add("-A MESHPY_INBOUND -p tcp -j MESHPY_IN_REDIRECT")
    else:
        for port in plan.inbound_ports:
            add(f"-A MESHPY_INBOUND -p tcp --dport {port} -j MESHPY_IN_REDIRECT")
    add(f"-A MESHPY_IN_REDIRECT -p tcp -j REDIRECT --to-ports {plan.inbound_port}")
    # Outbound: the proxy's own traffic and loopback pass, then the exclusions, then the rest is captured.
    # So the checks the proxy makes for the app's kubelet probes (meshpy/sidecar/probes.py, to
    # 127.0.0.1:<app port> from its UID) reach the app itself: either rule alone lets them through, and
    # being made in this pod they never pass PREROUTING's nat (nat sees a connection's first packet once,
    # in OUTPUT for a local one), so the inbound redirect does not take them either.
    add(f"-A MESHPY_OUTPUT -m owner --uid-owner {plan.proxy_uid} -j RETURN")
    if plan.proxy_gid is not None:
        add(f"-A MESHPY_OUTPUT -m owner --gid-owner {plan.proxy_gid} -j RETURN")
    add(f"-A MESHPY_OUTPUT -d {loopback} -j RETURN")
    for cidr in plan.exclude_cidrs:
        net = ipaddress.ip_network(cidr, strict=False)
        if (net.version == 6) == v6:
            add(f"-A MESHPY_OUTPUT -d {net} -j RETURN")
    for port in plan.exclude_outbound_ports:
        add(f"-A MESHPY_OUTPUT -p tcp --dport {port} -j RETURN")
    add("-A MESHPY_OUTPUT -j MESHPY_REDIRECT")
    add(f"-A MESHPY_REDIRECT -p tcp -j REDIRECT --to-ports {plan.outbound_port}")
    for builtin, ours in _HOOKS:
        add(f"-A {builtin} -p tcp -j {ours}")
    add("COMMIT")
    return "\n".join(lines) + "\n"


# Which iptables: the system's choice (Debian's alternatives), or nf_tables or the legacy x_tables
# explicitly. A node whose kube-proxy writes legacy rules needs the pod's rules in the same backend.
BACKENDS = ("auto", "nft", "legacy")


def tool_name(v6: bool = False, backend: str = "auto", suffix: str = "") -> str:
    """`iptables`, `ip6tables-nft-restore`, ...: the command for this family, backend and job."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    base = "ip6tables" if v6 else "iptables"
    return base + ("" if backend == "auto" else f"-{backend}") + suffix


def cleanup_commands(v6: bool = False, backend: str = "auto") -> list[list[str]]:
    """The commands that remove every rule and chain `restore_input` adds (each may fail harmlessly
    when there is nothing to remove)."""
    tool = tool_name(v6, backend)
    cmds = [[tool, "-t", "nat", "-D", builtin, "-p", "tcp", "-j", ours] for builtin, ours in _HOOKS]
    cmds += [[tool, "-t", "nat", "-F", chain] for chain in CHAINS]
    cmds += [[tool, "-t", "nat", "-X", chain] for chain in CHAINS]
    return cmds


def _run(argv: Sequence[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), input=stdin, capture_output=True, text=True, timeout=30, check=False)


def cleanup(v6: bool = False, backend: str = "auto") -> None:
    tool = tool_name(v6, backend)
    if shutil.which(tool) is None:
        raise InterceptError(f"{tool} is not installed")
    for argv in cleanup_commands(v6, backend):
        if argv[3] == "-D":
            # A hook may have been added more than once by hand: remove every copy.
            while _run(argv).returncode == 0:
                pass
        else:
            _run(argv)


def apply(plan: InterceptPlan, backend: str = "auto") -> None:
    """Remove any previous MESHPY_* rules, then install the plan's (IPv6 too when asked)."""
    for v6 in (False, True) if plan.ipv6 else (False,):
        tool = tool_name(v6, backend, "-restore")
        if shutil.which(tool) is None:
            raise InterceptError(f"{tool} is not installed")
        cleanup(v6, backend)
        done = _run([tool, "--noflush"], restore_input(plan, v6))
        if done.returncode != 0:
            raise InterceptError(f"{tool} --noflush failed: {done.stderr.strip() or done.stdout.strip()}")


def dry_run(plan: InterceptPlan) -> str:
    """What `apply` would feed iptables-restore (and ip6tables-restore), for review."""
    out = ["# iptables-restore --noflush", restore_input(plan)]
    if plan.ipv6:
        out += ["# ip6tables-restore --noflush", restore_input(plan, v6=True)]
    return "\n".join(out)
