"""`meshpy inject`: options and entry point (the work is in meshpy.sidecar.inject)."""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-f", "--filename", default="-", help="manifest file ('-': standard input)")


def run(args: argparse.Namespace) -> int:
    print("meshpy inject: not available yet", file=sys.stderr)
    return 2
