"""`meshpy run --pid-file F` and `meshpy reload --pid-file F`: a reload that reaches the one proxy meant,
where `kill -HUP "$(pgrep -f 'meshpy run')"` reaches every proxy on the machine (or fails on two)."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from pathlib import Path


def write(path: str) -> None:
    Path(path).write_text(f"{os.getpid()}\n")


def remove(path: str) -> None:
    """At exit: only if the file still names this process (another may have taken the path since)."""
    with contextlib.suppress(OSError, ValueError):
        if int(Path(path).read_text().strip()) == os.getpid():
            Path(path).unlink()


def reload(path: str) -> int:
    """SIGHUP to the proxy in `path`: it reloads its config file (its log says how that went)."""
    try:
        pid = int(Path(path).read_text().strip())
    except FileNotFoundError:
        return _fail(f"{path}: no such file (a proxy started with `meshpy run --pid-file {path}` writes it)")
    except (OSError, ValueError) as err:
        return _fail(f"{path}: not a pid file ({err})")
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        return _fail(f"{path}: no process {pid} (the proxy stopped without removing its pid file?)")
    except PermissionError:
        return _fail(f"{path}: process {pid} is not ours to signal")
    print(f"meshpy reload: asked process {pid} to reload its config file")
    return 0


def _fail(message: str) -> int:
    print(f"meshpy reload: {message}", file=sys.stderr)
    return 1
