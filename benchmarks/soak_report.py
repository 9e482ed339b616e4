"""The soak's measurements of the proxy process and its verdicts: RSS and open file descriptors sampled
from /proc, the proxy's own counters (retries, xDS), and the JSON and Markdown report.

The three requirements:
- no lost idempotent request: per protocol, every GET (HTTP/1.1, HTTP/2, the WebSocket handshake), every
  gRPC unary call and every TCP session that no origin's death explains was answered correctly;
- RSS growth under 5%: the median RSS of the last `window` seconds of traffic against the median of the
  `window` seconds after the warm-up;
- file descriptors back to baseline: after the traffic stops, the clients close and the upstream pools
  idle out, /proc/PID/fd holds no more entries than before the first request.
"""

from __future__ import annotations

import contextlib
import os
import re
import statistics
import urllib.request
from pathlib import Path
from typing import Any

from soak_tally import Stats

RSS_GROWTH_MAX = 0.05
METRICS = ("meshpy_upstream_rq_retry_total", "meshpy_upstream_rq_retry_success_total",
           "meshpy_upstream_rq_retry_overflow_total", "meshpy_upstream_rq_retry_limit_exceeded_total",
           "meshpy_upstream_cx_connect_fail_total", "meshpy_upstream_rq_timeout_total",
           "meshpy_upstream_cx_total", "meshpy_downstream_cx_total", "meshpy_config_loads_total",
           "meshpy_xds_updates_total", "meshpy_xds_reconnects_total",
           "meshpy_upstream_rq_pending_overflow_total")
# Gauges read once the traffic is over and the pools idled out: anything but 0 is something left behind.
GAUGES = ("meshpy_downstream_cx_active", "meshpy_downstream_rq_active", "meshpy_upstream_cx_active",
          "meshpy_upstream_rq_active")


def rss_kb(pid: int) -> int:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def fd_count(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def _socket_table(pid: int) -> dict[str, str]:
    """inode -> 'tcp 127.0.0.1:port -> 127.0.0.1:port STATE' for the process's network namespace."""
    states = {"01": "ESTABLISHED", "02": "SYN_SENT", "06": "TIME_WAIT", "07": "CLOSE", "08": "CLOSE_WAIT",
              "0A": "LISTEN", "04": "FIN_WAIT1", "05": "FIN_WAIT2", "09": "LAST_ACK", "0B": "CLOSING"}
    out: dict[str, str] = {}
    for proto in ("tcp", "tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/net/{proto}").read_text().splitlines()[1:]:
                f = line.split()
                local, remote = (_addr(a) for a in (f[1], f[2]))
                out[f[9]] = f"{proto} {local} -> {remote} {states.get(f[3], f[3])}"
    return out


def _addr(hex_addr: str) -> str:
    ip, port = hex_addr.split(":")
    host = ".".join(str(int(ip[i:i + 2], 16)) for i in (6, 4, 2, 0)) if len(ip) == 8 else "[v6]"
    return f"{host}:{int(port, 16)}"


def fd_table(pid: int) -> list[str]:
    """What each open descriptor is: a file path, a pipe, or a TCP socket with its addresses."""
    sockets = _socket_table(pid)
    out = []
    with contextlib.suppress(OSError):
        for fd in sorted(os.listdir(f"/proc/{pid}/fd"), key=int):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                target = sockets.get(target[8:-1], target)
            out.append(f"{fd}: {target}")
    return out


def scrape(admin_port: int) -> dict[str, float]:
    """The proxy's counters of interest, summed over their labels (per label set for xDS updates)."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/stats/prometheus", timeout=10) as r:
        text = r.read().decode()
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name not in METRICS and s.name not in GAUGES:
                continue
            key = s.name
            if s.name == "meshpy_xds_updates_total":
                key = f"{s.name}{{result={s.labels.get('result')}}}"
            out[key] = out.get(key, 0.0) + s.value
            tcp_cluster = s.labels.get("cluster", "").endswith("tcp")
            if s.name == "meshpy_upstream_cx_connect_fail_total" and tcp_cluster:
                key = f"{s.name}{{cluster=*tcp}}"  # the TCP proxy's: one failed session each
                out[key] = out.get(key, 0.0) + s.value
            if s.name in GAUGES and s.value:  # which listener or cluster, for a gauge not back to 0
                where = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
                out[f"{s.name}{{{where}}}"] = s.value
    return out


def delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """The counters' growth between two scrapes (the gauges left out)."""
    return {k: after[k] - before.get(k, 0.0) for k in sorted(after) if k.split("{")[0] not in GAUGES}


def gauges(scraped: dict[str, float]) -> dict[str, float]:
    """The gauges' totals, and per listener or cluster where one is not 0."""
    return {k: v for k, v in scraped.items() if k in GAUGES or (k.split("{")[0] in GAUGES and v)}


def rss_verdict(samples: list[dict[str, float]], warmup: float, window: float, end: float) -> dict[str, Any]:
    """Medians of the window after the warm-up and of the last window of traffic (before `end`)."""
    def median(lo: float, hi: float) -> float:
        values = [s["rss_kb"] for s in samples if lo <= s["t"] <= hi and s["rss_kb"] > 0]
        return float(statistics.median(values)) if values else 0.0

    warm = median(warmup, warmup + window)
    last = median(end - window, end)
    growth = (last - warm) / warm if warm else 0.0
    first = next((s["rss_kb"] for s in samples if s["rss_kb"] > 0), 0.0)
    peak = max((s["rss_kb"] for s in samples), default=0.0)
    return {"start_kb": first, "after_warmup_kb": warm, "end_kb": last, "max_kb": peak,
            "growth": round(growth, 4), "limit": RSS_GROWTH_MAX, "warmup_s": warmup, "window_s": window,
            "ok": warm > 0 and growth < RSS_GROWTH_MAX}


def rss_timeline(samples: list[dict[str, float]], points: int = 7) -> list[tuple[float, float]]:
    """(t, RSS) at `points` evenly spaced moments of the run, for the report's one-line summary."""
    usable = [s for s in samples if s["rss_kb"] > 0]
    if len(usable) < points:
        return [(s["t"], s["rss_kb"]) for s in usable]
    step = (len(usable) - 1) / (points - 1)
    return [(usable[round(i * step)]["t"], usable[round(i * step)]["rss_kb"]) for i in range(points)]


def live_line(stats: Stats, rss: int, fds: int, retries: float | None) -> str:
    sent, ok, lost = stats.totals()
    per = " ".join(f"{n} {t.ok}" for n, t in stats.tallies.items() if n != "resets")
    chaos = ", ".join(f"{v} {k}" for k, v in sorted(stats.chaos.items()))
    retry = "?" if retries is None else f"{retries:.0f}"
    return (f"[{stats.clock.now():6.0f}s] ok {ok}/{sent} ({per}) lost {lost} | retries {retry} | "
            f"rss {rss / 1024:.1f} MiB, fds {fds} | {chaos}")


def markdown(r: dict[str, Any]) -> str:
    req = r["requirements"]
    rss = req["rss"]
    fds = req["fds"]
    lines = [f"# meshpy soak, {r['started']} (commit {r['commit']}{', dirty' if r['dirty'] else ''})", "",
             f"{r['duration_s']:.0f} s at {r['rate']:.0f} req/s through one `meshpy run` (file + xDS), "
             f"{r['origins']} origins; verdict: **{'PASS' if r['ok'] else 'FAIL'}**.", "",
             "| requirement | measured | verdict |", "|---|---|---|",
             f"| no lost idempotent request | {req['lost']['lost']} lost of {req['lost']['sent']} ("
             + ", ".join(f"{k} {v}" for k, v in req["lost"]["per_protocol"].items()) + ") | "
             f"{_ok(req['lost']['ok'])} |",
             f"| RSS growth after warm-up < {rss['limit']:.0%} | {rss['after_warmup_kb'] / 1024:.1f} -> "
             f"{rss['end_kb'] / 1024:.1f} MiB ({rss['growth']:+.1%}) | {_ok(rss['ok'])} |",
             f"| fds back to baseline | {fds['baseline']} -> {fds['end']} (after {fds['waited_s']} s idle) | "
             f"{_ok(fds['ok'])} |",
             f"| proxy alive throughout | exit code {r['proxy_exit']} | {_ok(r['proxy_exit'] is None)} |",
             f"| configs followed | {req['configs']['detail']} | {_ok(req['configs']['ok'])} |",
             f"| (check) active gauges back to 0 | {_nonzero(r['gauges_idle']) or 'all 0'} | "
             f"{'ok' if not _nonzero(r['gauges_idle']) else 'WARN'} |", "",
             "| traffic | sent | ok | lost | expected | p50 ms | p99 ms | failures |",
             "|---|---|---|---|---|---|---|---|"]
    for name, t in r["protocols"].items():
        lost = t["lost"] if t["idempotent"] else f"({t['failed']} failed, not idempotent)"
        fails = "; ".join(f"{k}: {v}" for k, v in sorted(t["failures"].items())) or "-"
        lines.append(f"| {name} | {t['sent']} | {t['ok']} | {lost} | {t['expected']} | {t['p50_ms']} | "
                     f"{t['p99_ms']} | {fails} |")
    lines += ["", "Chaos: " + ", ".join(f"{v} {k}" for k, v in sorted(r["chaos"]["counts"].items())) + ".",
              f"RSS: start {rss['start_kb'] / 1024:.1f} MiB, "
              f"after warm-up {rss['after_warmup_kb'] / 1024:.1f}, "
              f"end {rss['end_kb'] / 1024:.1f}, max {rss['max_kb'] / 1024:.1f}.",
              "Proxy counters over the run: " + ", ".join(
                  f"{k.removeprefix('meshpy_')} {v:.0f}" for k, v in r["proxy_counters"].items()) + ".",
              "Gauges at the end (idle): " + ", ".join(
                  f"{k.removeprefix('meshpy_')} {v:.0f}" for k, v in r["gauges_idle"].items() if "{" not in k)
              + "."]
    tcp = r["protocols"].get("tcp")
    if tcp is not None:
        closed = sum(v for k, v in tcp["failures"].items() if "before the origin's greeting" in k)
        fails = r["proxy_counters"].get("meshpy_upstream_cx_connect_fail_total{cluster=*tcp}", 0)
        lines.append(f"TCP: {closed} sessions closed before the origin's greeting; the proxy's TCP clusters "
                     f"counted {fails:.0f} failed connects (a TCP proxy connects once: each is one session).")
    timeline = rss_timeline(r["samples"])
    if timeline:
        lines.append("RSS over the run: " + ", ".join(f"{t:.0f} s {kb / 1024:.1f} MiB" for t, kb in timeline)
                     + ".")
    if r["origins_unreachable"]:
        first = r["origins_unreachable"][0]
        lines.append(f"Origins up but not accepting a connect (the machine, not the proxy): "
                     f"{len(r['origins_unreachable'])} probes failed, the first at {first['t']} s "
                     f"({first['origin']} {first['port']}: {first['error']}).")
    if r["chaos"]["errors"]:
        lines += ["", "Chaos that could not be done:", *(f"- {e}" for e in r["chaos"]["errors"])]
    if fds["leftover"]:
        lines += ["", "Descriptors beyond the baseline at the end:", *(f"- `{x}`" for x in fds["leftover"])]
    if r["proxy_log_errors"]:
        lines += ["", "Proxy log records at ERROR (grouped):",
                  *(f"- {g['count']} x `{g['message']}`" + (f": `{g['exception']}`" if g["exception"] else "")
                    + f" (first at {g['first']})" for g in r["proxy_log_errors"][:20])]
    return "\n".join(lines) + "\n"


def _nonzero(values: dict[str, float]) -> str:
    """The gauges not back to 0, per listener or cluster."""
    return ", ".join(f"{k.removeprefix('meshpy_')} {v:.0f}" for k, v in values.items() if v and "{" in k)


def _ok(ok: bool) -> str:
    return "ok" if ok else "**FAIL**"


def log_errors(log: Path) -> list[dict[str, Any]]:
    """The proxy log's ERROR and CRITICAL records, grouped: the message (numbers made N) and the last
    line of its traceback (the exception that ended it), with how often each came and the first time."""
    records: list[tuple[str, str, list[str]]] = []  # (time, message, lines after the head)
    current: list[str] | None = None
    with contextlib.suppress(OSError):
        for line in log.read_text(errors="replace").splitlines():
            head = re.match(r"^(\S+ \S+) (ERROR|CRITICAL|WARNING|INFO|DEBUG) (\S+): (.*)$", line)
            if head:
                current = None
                if head.group(2) in ("ERROR", "CRITICAL"):
                    current = []
                    records.append((head.group(1), re.sub(r"\d+", "N", head.group(4))[:200], current))
            elif current is not None:
                current.append(line)
    groups: dict[tuple[str, str], dict[str, Any]] = {}
    for first, message, lines in records:
        ends = [ln for ln in lines if ln and not ln.startswith((" ", "Traceback", "The above", "During"))]
        exc = re.sub(r"\d+", "N", ends[-1])[:200] if ends else ""
        group = groups.setdefault((message, exc), {"first": first, "message": message, "exception": exc,
                                                   "count": 0})
        group["count"] += 1
    return sorted(groups.values(), key=lambda g: -int(g["count"]))
