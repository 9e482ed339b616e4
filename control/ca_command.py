"""`meshpy ca stage|rotate|retire|status`: an operator's root rotation, through the control plane's admin
listener (control/ca_admin.py), as `meshpy drain` talks to a proxy's.

  meshpy ca status  --admin 127.0.0.1:18001     the signing CA, the bundle, the staged CA, the overlap
  meshpy ca stage                                the next CA (--ca-dir's next/, or a new root) is trusted
  meshpy ca rotate  [--overlap SECONDS]          the staged CA signs; the old root stays for the overlap
  meshpy ca retire                               the old root leaves the bundle now
  meshpy ca bundle                               the trust bundle (PEM), e.g. for a ConfigMap

Exit status: 0 done, 1 refused or unreachable (the reason on stderr), 2 usage. Only the standard
library here: it runs wherever the meshpy image does, without the control plane's dependencies.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from meshpy.sidecar.lifecycle_cli import request

DEFAULT_ADMIN = "127.0.0.1:18001"  # meshpy control's default --admin
ACTIONS = ("status", "stage", "rotate", "retire", "bundle")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=ACTIONS,
                        help="status: show; stage: trust the next CA; rotate: sign with it; retire: drop "
                             "the old root; bundle: print the trust bundle (PEM)")
    parser.add_argument("--admin", default=DEFAULT_ADMIN,
                        help=f"the control plane's admin address (default {DEFAULT_ADMIN})")
    parser.add_argument("--overlap", type=float, metavar="SECONDS",
                        help="rotate: keep the old root this long (default: the longest leaf lifetime "
                             "and a minute)")
    parser.add_argument("--json", action="store_true", help="print the control plane's JSON answer")


def _address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"--admin: expected HOST:PORT, got {text!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def run(args: argparse.Namespace) -> int:
    if args.overlap is not None and (args.action != "rotate" or not args.overlap >= 0):
        print("meshpy ca: --overlap SECONDS (>= 0) goes with rotate", file=sys.stderr)
        return 2
    try:
        address = _address(args.admin)
    except ValueError as err:
        print(f"meshpy ca: {err}", file=sys.stderr)
        return 2
    target = {"status": "/ca", "bundle": "/ca/bundle.pem"}.get(args.action, f"/ca/{args.action}")
    if args.overlap is not None:
        target += f"?overlap={args.overlap:g}"
    try:
        method = "GET" if args.action in ("status", "bundle") else "POST"
        status, body = request(address, method, target, 10.0)
        if args.action == "bundle" and status == 200:
            print(body, end="")
            return 0
        answer = json.loads(body)
    except OSError as err:
        print(f"meshpy ca {args.action}: {args.admin}: {err.strerror or err}", file=sys.stderr)
        return 1
    except ValueError:
        print(f"meshpy ca {args.action}: {args.admin} answered {status}, not JSON: {body[:200]!r}",
              file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(answer, indent=1))
    if status != 200:
        print(f"meshpy ca {args.action}: refused: {answer.get('error', body)}", file=sys.stderr)
        return 1
    if not args.json:
        if "message" in answer:
            print(f"meshpy ca {args.action}: {answer['message']}")
        print(describe(answer.get("status", answer)), end="")
    return 0


def describe(status: dict[str, Any]) -> str:
    """GET /ca's answer, for people."""
    lines = [f"trust domain  {status['trust_domain']}   ({status['ca_dir'] or 'in memory: no --ca-dir'})"]
    state = status["state"]
    if state == "overlap":
        state += f": the old root leaves the trust bundle at {status['overlap_end']}"
    lines.append(f"state         {state}")
    signing = status["signing"]
    lines.append(f"signing       {signing['subject']}  until {signing['not_after']}")
    for i, root in enumerate(status["bundle"]):
        extra = ""
        if root["role"] == "retiring":
            extra = f"; retires {root['retire_after']}"
            if root.get("last_leaf_expiry"):
                extra += f"; a leaf signed here is valid until {root['last_leaf_expiry']}"
        head = "trust bundle" if i == 0 else ""
        lines.append(f"{head:<14}{root['role']:<9} {root['subject']} [{root['sha256'][:16]}]{extra}")
    staged = status["staged"]
    lines.append(f"staged        {staged['subject'] if staged else '-'}")
    lines.append(f"watchers      {status.get('bundle_watchers', 0)} sidecars watch the trust bundle")
    return "".join(line + "\n" for line in lines)
