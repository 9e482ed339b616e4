"""The interception rules `meshpy iptables` installs, as text (no iptables needed)."""

from __future__ import annotations

import pytest

from meshpy.cli import main
from meshpy.sidecar.iptables import CHAINS, InterceptPlan, cleanup_commands, restore_input


def rules(plan: InterceptPlan, v6: bool = False) -> list[str]:
    return restore_input(plan, v6).splitlines()


def test_default_plan() -> None:
    lines = rules(InterceptPlan())
    assert lines[0] == "*nat" and lines[-1] == "COMMIT"
    assert [f":{c} - [0:0]" for c in CHAINS] == lines[1:5]
    # Order matters: the proxy's own traffic and loopback pass before anything is captured.
    out = [x for x in lines if x.startswith("-A MESHPY_OUTPUT")]
    assert out == ["-A MESHPY_OUTPUT -m owner --uid-owner 10001 -j RETURN",
                   "-A MESHPY_OUTPUT -d 127.0.0.0/8 -j RETURN",
                   "-A MESHPY_OUTPUT -j MESHPY_REDIRECT"]
    assert "-A MESHPY_REDIRECT -p tcp -j REDIRECT --to-ports 15001" in lines
    assert [x for x in lines if x.startswith("-A MESHPY_INBOUND")] == [
        "-A MESHPY_INBOUND -p tcp --dport 15000 -j RETURN", "-A MESHPY_INBOUND -p tcp -j MESHPY_IN_REDIRECT"]
    assert "-A MESHPY_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006" in lines
    assert lines[-3:-1] == ["-A PREROUTING -p tcp -j MESHPY_INBOUND", "-A OUTPUT -p tcp -j MESHPY_OUTPUT"]


def test_exclusions_and_families() -> None:
    plan = InterceptPlan(proxy_gid=1337, exclude_cidrs=("10.96.0.0/12", "fd00::/8"),
                         exclude_outbound_ports=(3306,), inbound_ports=(8080, 9090), ipv6=True)
    v4, v6 = rules(plan), rules(plan, v6=True)
    assert "-A MESHPY_OUTPUT -m owner --gid-owner 1337 -j RETURN" in v4
    assert "-A MESHPY_OUTPUT -d 10.96.0.0/12 -j RETURN" in v4 and not any("fd00" in x for x in v4)
    assert "-A MESHPY_OUTPUT -d fd00::/8 -j RETURN" in v6 and not any("10.96" in x for x in v6)
    assert "-A MESHPY_OUTPUT -d ::1/128 -j RETURN" in v6
    assert "-A MESHPY_OUTPUT -p tcp --dport 3306 -j RETURN" in v4
    assert [x for x in v4 if "MESHPY_IN_REDIRECT" in x and "--dport" in x] == [
        "-A MESHPY_INBOUND -p tcp --dport 8080 -j MESHPY_IN_REDIRECT",
        "-A MESHPY_INBOUND -p tcp --dport 9090 -j MESHPY_IN_REDIRECT"]


def test_no_inbound_capture() -> None:
    assert not any("-j MESHPY_IN_REDIRECT" in x for x in rules(InterceptPlan(inbound_ports=())))


@pytest.mark.parametrize("bad", [{"outbound_port": 0}, {"exclude_cidrs": ("10.0.0.0/33",)},
                                 {"exclude_inbound_ports": (70000,)}])
def test_bad_plans(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        InterceptPlan(**bad)  # type: ignore[arg-type]


def test_cleanup_removes_what_is_added() -> None:
    cmds = cleanup_commands()
    assert ["iptables", "-t", "nat", "-D", "OUTPUT", "-p", "tcp", "-j", "MESHPY_OUTPUT"] in cmds
    assert {c[-1] for c in cmds if c[3] == "-X"} == set(CHAINS)
    assert cleanup_commands(v6=True)[0][0] == "ip6tables"


def test_cli_dry_run(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["iptables", "--dry-run", "--exclude-cidrs", "10.0.0.0/8", "--inbound-ports", ""]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# iptables-restore --noflush\n*nat\n") and "-d 10.0.0.0/8 -j RETURN" in out
    assert "MESHPY_IN_REDIRECT -p tcp -j REDIRECT" in out and "-j MESHPY_IN_REDIRECT\n" not in out
    assert main(["iptables", "--dry-run", "--exclude-cidrs", "nonsense"]) == 2
    assert "meshpy iptables: " in capsys.readouterr().err
