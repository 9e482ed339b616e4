"""A root rotation's state in the CA's directory (`--ca-dir`), so that a restart picks it up where it was.

Beside the CA's own files (Istio's `cacerts` names, control/ca_files.py), the directory may hold:

  next/                 the next CA, with the same file names: staged (its root in the bundle, not signing)
  previous/             the CA signing before the last rotation, same file names, kept while its root is
                        still trusted; its key stays so that an operator can roll back (stage it again)
  previous/retire-after when the old root leaves the bundle: one RFC 3339 UTC time, e.g.
                        2025-06-08T10:00:00Z
  rotating              written while next/ is copied over the top-level files: a restart that finds it
                        finishes the copy (previous/ is complete before it is written)

A rotation copies the current files into previous/ (with retire-after), then next/'s over the current
ones, then removes next/. Retiring removes previous/. Every write goes through a temporary file and a
rename; keys are written 0600 and directories 0700.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
from pathlib import Path

from cryptography import x509

from control.ca import Issuer
from control.ca_files import CA_CERT, CA_KEY, CERT_CHAIN, ROOT_CERT, CaSetupError, load_issuer, write_root

NEXT, PREVIOUS, RETIRE_AFTER, ROTATING = "next", "previous", "retire-after", "rotating"
FILES = (CERT_CHAIN, ROOT_CERT, CA_CERT, CA_KEY)  # the key last: until it is in, the old files still fit


def rfc3339(seconds: float) -> str:
    return dt.datetime.fromtimestamp(int(seconds), dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_rfc3339(text: str) -> float:
    when = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    if when.tzinfo is None:
        raise ValueError("no time zone")
    return when.timestamp()


class CaStore:
    """The rotation files of one CA directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.next, self.previous = directory / NEXT, directory / PREVIOUS

    # -- next/ ----------------------------------------------------------------------------------------------
    def has_next(self) -> bool:
        present = [n for n in (CA_CERT, CA_KEY) if (self.next / n).exists()]
        if len(present) == 1:
            missing = ({CA_CERT, CA_KEY} - set(present)).pop()
            raise CaSetupError(f"{self.next}: {present[0]} without {missing}; give both, or neither for a "
                               "new root made here")
        return bool(present)

    def load_next(self) -> Issuer:
        return load_issuer(self.next)

    def write_next(self, issuer: Issuer) -> None:
        """A new root of our own into next/ (which holds no CA files)."""
        write_root(self.next, issuer)

    # -- previous/ ------------------------------------------------------------------------------------------
    def load_previous(self) -> tuple[x509.Certificate, float] | None:
        """The old root and when it retires; None when there is none. Raises CaSetupError."""
        if not self.previous.exists():
            return None
        when_file = self.previous / RETIRE_AFTER
        try:
            until = parse_rfc3339(when_file.read_text())
        except OSError as err:
            raise CaSetupError(f"{when_file}: cannot read: {err.strerror}") from err
        except ValueError as err:
            raise CaSetupError(f"{when_file}: not an RFC 3339 time such as 2025-06-08T10:00:00Z: "
                               f"{err}") from err
        root_file = self.previous / ROOT_CERT
        if not root_file.exists():
            raise CaSetupError(f"{root_file}: missing (previous/ holds the CA before the last rotation)")
        try:
            root = x509.load_pem_x509_certificate(root_file.read_bytes())
        except (OSError, ValueError) as err:
            raise CaSetupError(f"{root_file}: not a PEM certificate: {err}") from err
        return root, until

    def remove_previous(self) -> None:
        if self.previous.exists():
            shutil.rmtree(self.previous)

    # -- the rotation ---------------------------------------------------------------------------------------
    def commit_rotation(self, retire_after: float) -> None:
        """The current files into previous/ (with retire-after), next/'s in their place, next/ removed.
        Raises OSError; until `rotating` is written nothing the CA reads at start has changed."""
        self.remove_previous()
        staging = self.directory / f".{PREVIOUS}.tmp"
        if staging.exists():
            shutil.rmtree(staging)
        staging.mkdir(mode=0o700)
        for name in FILES:
            if (self.directory / name).exists():
                _copy(self.directory / name, staging / name)
        _write(staging / RETIRE_AFTER, (rfc3339(retire_after) + "\n").encode(), 0o644)
        os.replace(staging, self.previous)
        _write(self.directory / ROTATING, b"copying next/ over the CA's files: a restart finishes it\n",
               0o644)
        self.finish_rotation()

    def finish_rotation(self) -> bool:
        """Complete a rotation that `rotating` says was cut short (also the last step of every one).
        True when there was one to finish."""
        marker = self.directory / ROTATING
        if not marker.exists():
            return False
        if self.next.exists():
            for name in FILES:
                source, target = self.next / name, self.directory / name
                if source.exists():
                    _copy(source, target)
                elif target.exists():
                    target.unlink()  # a chain file of the old CA would not fit the new one
            shutil.rmtree(self.next)
        marker.unlink()
        return True


def _copy(source: Path, target: Path) -> None:
    _write(target, source.read_bytes(), 0o600 if source.name == CA_KEY else 0o644)


def _write(target: Path, data: bytes, mode: int) -> None:
    """Whole or not at all: a temporary file beside the target, flushed, then renamed over it."""
    tmp = target.with_name(f".{target.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(tmp, mode)  # O_CREAT's mode is masked by the umask, and ignored for an existing file
    os.replace(tmp, target)
