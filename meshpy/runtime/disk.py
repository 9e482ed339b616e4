"""A disk layer, read as Envoy 1.40's DiskLayer reads it, and the signature that tells it was swapped.

Every regular file under the layer's directory is one key: its path below the directory with `/`
turned into `.` (`fault/http/abort/abort_percent` is `fault.http.abort.abort_percent`), its content
the value. Lines starting with `#` are comments and dropped; empty lines too; the last line loses its
trailing whitespace. Symbolic links are followed; anything but files and directories is skipped. A
directory that does not exist is no layer at all (Envoy leaves it out of `/runtime`); one that cannot
be read, or nests deeper than 16, or lies under /dev, /sys or /proc, fails the whole layer.

Envoy re-reads its disk layers when the symlink root is renamed over (inotify, IN_MOVED_TO on its
directory): the usual `ln -s v2 new && mv -T new current`. meshpy polls instead (`signature`, one
lstat every POLL_INTERVAL seconds: no inotify binding in the standard library, and a half-second delay
is nothing next to the human or script that swaps the link). A rename gives the root a new inode, so
the signature changes exactly when Envoy would reload, and also when the root is created or replaced
by other means, which Envoy would notice only at its next rename. Writing into the files the link
already points to changes nothing, in either.
"""

from __future__ import annotations

import os

from meshpy.model.runtime import Entry
from meshpy.runtime.values import RuntimeValueError, from_text

__all__ = ["MAX_DEPTH", "POLL_INTERVAL", "Signature", "file_value", "read_directory", "signature"]

MAX_DEPTH = 16  # Envoy's MaxWalkDepth
POLL_INTERVAL = 0.5
_ILLEGAL = ("/dev", "/sys", "/proc")  # Envoy's illegalPath on Linux

Signature = tuple[int, int, int] | None


def signature(symlink_root: str) -> Signature:
    """What changes when the root is swapped: its own inode (not its target's) and change time."""
    try:
        st = os.lstat(symlink_root)
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_ctime_ns


def read_directory(path: str) -> dict[str, Entry] | None:
    """The layer's values, or None when `path` is no directory. Raises OSError or RuntimeValueError
    when the layer cannot be read (Envoy then leaves it out and counts a load error)."""
    if not os.path.isdir(path):
        return None
    values: dict[str, Entry] = {}
    _walk(path, "", 1, values)
    return values


def _walk(path: str, prefix: str, depth: int, out: dict[str, Entry]) -> None:
    if depth > MAX_DEPTH:
        raise RuntimeValueError(f"Walk recursion depth exceeded {MAX_DEPTH}")
    real = os.path.realpath(path)
    if any(real == d or real.startswith(d + "/") for d in _ILLEGAL):
        raise RuntimeValueError(f"Invalid path: {path}")
    with os.scandir(path) as it:
        found = list(it)
    for item in found:
        full = f"{path}/{item.name}"
        key = f"{prefix}.{item.name}" if prefix else item.name
        if item.is_dir():
            _walk(full, key, depth + 1, out)
        elif item.is_file() or item.is_symlink():  # a dangling link: Envoy tries to read it, and fails
            with open(full, "rb") as f:
                text = f.read().decode("utf-8", "replace")
            out[key] = from_text(file_value(text))


def file_value(text: str) -> str:
    """A file's content as Envoy takes it: comment and empty lines dropped, the last line right-trimmed.
    (Envoy trims every line equal to the last one, and joins those without a newline: kept as is.)"""
    lines = [line for line in text.split("\n") if line]
    value = []
    for line in lines:
        if line.startswith("#"):
            continue
        value.append(line.rstrip(" \t\n\v\f\r") if line == lines[-1] else line + "\n")
    return "".join(value)
