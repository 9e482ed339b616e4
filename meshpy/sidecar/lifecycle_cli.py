"""`meshpy wait` and `meshpy drain`: the sidecar's hooks, talking to the admin listener."""

from __future__ import annotations

import argparse
import sys


def add_wait_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--admin", default="127.0.0.1:15000", help="the proxy's admin address")


def add_drain_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--admin", default="127.0.0.1:15000", help="the proxy's admin address")


def run_wait(args: argparse.Namespace) -> int:
    print("meshpy wait: not available yet", file=sys.stderr)
    return 2


def run_drain(args: argparse.Namespace) -> int:
    print("meshpy drain: not available yet", file=sys.stderr)
    return 2
