"""`meshpy wait` and `meshpy drain`: the sidecar's hooks, talking to its admin listener.

`meshpy wait` is the postStart hook of the injected sidecar (kubelet starts the app's container only
after it returns, so the app never starts before its proxy: Istio's holdApplicationUntilProxyStarts)
and its readiness probe. `meshpy drain --inbound-only` is the preStop hook: callers are turned away
while the app still finishes its own outbound calls. Plain HTTP/1.1 over a socket: the hooks run in
the proxy's image, and a probe that forks a process every few seconds should start fast.
"""

from __future__ import annotations

import argparse
import socket
import sys
import time

from meshpy.model.types import DEFAULT_ADMIN as RUN_DEFAULT
from meshpy.model.unix_address import PREFIX, os_path

DEFAULT_ADMIN = str(RUN_DEFAULT)  # as `meshpy run` without a config file


def add_wait_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--admin", default=DEFAULT_ADMIN,
                        help=f"the proxy's admin address: HOST:PORT or unix:PATH ({DEFAULT_ADMIN})")
    parser.add_argument("--timeout", type=float, default=60.0,
                        help="seconds to wait for /ready to answer 200 (default 60)")
    parser.add_argument("--interval", type=float, default=0.2, help="seconds between two looks (0.2)")


def add_drain_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--admin", default=DEFAULT_ADMIN,
                        help=f"the proxy's admin address: HOST:PORT or unix:PATH ({DEFAULT_ADMIN})")
    parser.add_argument("--inbound-only", action="store_true",
                        help="drain only the listeners of inbound traffic (the app's callers)")
    parser.add_argument("--now", action="store_true",
                        help="stop accepting at once instead of after the drain time")


def _split(address: str) -> tuple[str, int] | str:
    if address.startswith(PREFIX):  # an admin on a Unix socket: unix:PATH or unix:@NAME
        path = address[len(PREFIX):]
        if not path:
            raise ValueError(f"--admin: expected unix:PATH, got {address!r}")
        return path
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"--admin: expected HOST:PORT, got {address!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def _admin(args: argparse.Namespace, command: str) -> tuple[str, int] | str | None:
    """The --admin address, or None after saying what is wrong with it (a usage error)."""
    try:
        return _split(args.admin)
    except ValueError as err:
        print(f"meshpy {command}: {err}", file=sys.stderr)
        return None


def _connect(address: tuple[str, int] | str, timeout: float) -> socket.socket:
    if isinstance(address, tuple):
        return socket.create_connection(address, timeout=timeout)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(os_path(address))
    except BaseException:
        sock.close()
        raise
    return sock


def request(address: tuple[str, int] | str, method: str, target: str, timeout: float) -> tuple[int, str]:
    """One HTTP/1.1 request to the admin listener: (status, body)."""
    with _connect(address, timeout) as sock:
        sock.sendall(f"{method} {target} HTTP/1.1\r\nHost: meshpy-admin\r\nConnection: close\r\n"
                     "Content-Length: 0\r\n\r\n".encode())
        chunks = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n", 1)[0].split()
    if len(status_line) < 2 or not status_line[1].isdigit():
        raise OSError("not an HTTP answer")
    return int(status_line[1]), body.decode("utf-8", "replace")


def run_wait(args: argparse.Namespace) -> int:
    address = _admin(args, "wait")
    if address is None:
        return 2
    deadline = time.monotonic() + args.timeout
    last = "no answer"
    while True:
        left = deadline - time.monotonic()
        try:
            status, body = request(address, "GET", "/ready", max(0.1, min(left, 2.0)))
            if status == 200:
                print(f"meshpy wait: ready ({body.strip()})")
                return 0
            last = f"{status} {body.strip()}"
        except OSError as err:
            last = err.strerror or str(err) or type(err).__name__
        if time.monotonic() + args.interval > deadline:
            print(f"meshpy wait: not ready within {args.timeout:g}s ({args.admin}: {last})", file=sys.stderr)
            return 1
        time.sleep(args.interval)


def run_drain(args: argparse.Namespace) -> int:
    address = _admin(args, "drain")
    if address is None:
        return 2
    flags = [f for f, on in (("inboundonly", args.inbound_only), ("graceful", not args.now)) if on]
    target = "/drain_listeners" + ("?" + "&".join(flags) if flags else "")
    try:
        status, body = request(address, "POST", target, 5.0)
    except OSError as err:
        print(f"meshpy drain: {args.admin}: {err.strerror or err}", file=sys.stderr)
        return 1
    if status != 200:
        print(f"meshpy drain: {args.admin} answered {status} {body.strip()}", file=sys.stderr)
        return 1
    print(f"meshpy drain: {'inbound listeners' if args.inbound_only else 'listeners'} draining")
    return 0
