"""A root rotation as an operator drives it (control/ca_rotation.py): stage, rotate, retire, in memory and
in `--ca-dir` across restarts, what is refused and why (the CA then unchanged), the end of an overlap
by itself, a rotation cut short by a crash, and the admin's /ca paths over a real socket."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import stat
import time
from pathlib import Path

import pytest
from cryptography import x509

from control.admin import MAX_HEAD, ControlAdmin, is_loopback
from control.ads import AdsServer
from control.ca import BACKDATE, CertificateAuthority
from control.ca_admin import CaAdmin
from control.ca_cli import CaOptions
from control.ca_files import CA_CERT, CA_KEY, ROOT_CERT, CaSetupError, self_signed_root, write_root
from control.ca_plane import CaPlane
from control.ca_rotation import BundleChange, RootRotation, RotationRefused, spiffe_trust_domains
from control.ca_store import RETIRE_AFTER, ROTATING, CaStore, parse_rfc3339
from control.cache import SnapshotCache

TRUST = "test.local"


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def heard(rotation: RootRotation) -> list[BundleChange]:
    changes: list[BundleChange] = []
    rotation.listeners.append(changes.append)
    return changes


def test_stage_rotate_retire_in_memory() -> None:
    clock = Clock(time.time())
    old = self_signed_root(TRUST)
    ca = CertificateAuthority(old, trust_domain=TRUST, default_ttl=60.0, max_ttl=120.0, clock=clock)
    rotation = RootRotation(ca)
    changes = heard(rotation)
    with pytest.raises(RotationRefused, match="nothing is staged"):
        rotation.rotate()
    with pytest.raises(RotationRefused, match="no old root"):
        rotation.retire()
    assert changes == []

    assert "staged a new root (in memory)" in rotation.stage()
    new = ca.staged
    assert new is not None and ca.issuer is old
    assert [c.roots for c in changes] == [(old.cert, new.cert)] and not changes[0].signing
    assert spiffe_trust_domains(new.cert) == {TRUST}  # a root of ours names its trust domain
    assert new.cert.subject != old.cert.subject  # two roots side by side are told apart by name
    assert rotation.status()["state"] == "staged"

    message = rotation.rotate(overlap=30.0)
    assert "(shorter than the longest leaf lifetime" in message
    assert ca.issuer is new and ca.staged is None
    assert changes[-1].roots == (new.cert, old.cert) and changes[-1].signing
    status = rotation.status()
    assert status["state"] == "overlap" and [r["role"] for r in status["bundle"]] == ["signing", "retiring"]

    # Another rotation waits for the old root to leave.
    rotation.stage()
    with pytest.raises(RotationRefused, match="is still in the trust bundle until"):
        rotation.rotate()
    assert ca.issuer is new

    # The overlap ends by itself; check() (run every second) tells the listeners.
    clock.now += 31
    assert rotation.check()
    assert old.cert not in changes[-1].roots and not changes[-1].signing
    assert not rotation.check()  # nothing new: nobody is told twice


def test_retire_ends_the_overlap_now_and_says_which_leaves_it_cuts_off() -> None:
    ca = CertificateAuthority(self_signed_root(TRUST), trust_domain=TRUST, default_ttl=60.0)
    rotation = RootRotation(ca)
    ca.issue_key_pair(f"spiffe://{TRUST}/ns/shop/sa/orders")  # a leaf of the old root, valid 60 s more
    rotation.stage()
    rotation.rotate()
    assert rotation.default_overlap == ca.max_ttl + BACKDATE
    message = rotation.retire()
    assert "a leaf this control plane signed under it is valid until" in message
    assert len(ca.trust_bundle()) == 1


def test_a_rollback_to_the_old_root_is_allowed_during_its_overlap() -> None:
    old = self_signed_root(TRUST)
    ca = CertificateAuthority(old, trust_domain=TRUST)
    rotation = RootRotation(ca)
    rotation.stage()
    rotation.rotate()
    ca.stage(old)  # as staging previous/ again does
    rotation.rotate()
    assert ca.issuer is old and ca.retiring()[0][0] != old.cert  # the root signing again is not retiring


def test_a_ca_dir_keeps_the_rotation_across_restarts(tmp_path: Path) -> None:
    ca_dir = tmp_path / "ca"
    opts = CaOptions(TRUST, ca_dir, 60.0)
    plane = CaPlane(opts)
    first = plane.authority.issuer.cert
    assert "written to" in plane.rotation.stage()
    store = CaStore(ca_dir)
    assert stat.S_IMODE(os.stat(store.next / CA_KEY).st_mode) == 0o600
    staged = x509.load_pem_x509_certificate((store.next / CA_CERT).read_bytes())
    assert plane.rotation.stage().startswith("already staged")

    # A restart while staged: the staged root is trusted again, the old CA still signs.
    plane = CaPlane(opts)
    assert plane.authority.issuer.cert == first and plane.authority.trust_bundle() == [first, staged]

    plane.rotation.rotate()
    assert not store.next.exists() and not (ca_dir / ROTATING).exists()
    assert x509.load_pem_x509_certificate((ca_dir / CA_CERT).read_bytes()) == staged
    assert x509.load_pem_x509_certificate((store.previous / ROOT_CERT).read_bytes()) == first
    assert stat.S_IMODE(os.stat(store.previous / CA_KEY).st_mode) == 0o600
    until = parse_rfc3339((store.previous / RETIRE_AFTER).read_text())
    assert abs(until - (time.time() + plane.rotation.default_overlap)) < 5

    # A restart during the overlap: the new CA signs, the old root is still trusted until its time.
    plane = CaPlane(opts)
    assert plane.authority.issuer.cert == staged
    assert plane.authority.trust_bundle() == [staged, first]
    assert plane.rotation.status()["overlap_end"] == (store.previous / RETIRE_AFTER).read_text().strip()

    plane.rotation.retire()
    assert not store.previous.exists()
    plane = CaPlane(opts)
    assert plane.authority.trust_bundle() == [staged]


def test_an_overlap_that_ended_while_down_is_over_at_start(tmp_path: Path) -> None:
    ca_dir = tmp_path / "ca"
    plane = CaPlane(CaOptions(TRUST, ca_dir))
    plane.rotation.stage()
    plane.rotation.rotate()
    (ca_dir / "previous" / RETIRE_AFTER).write_text("2001-01-01T00:00:00Z\n")
    plane = CaPlane(CaOptions(TRUST, ca_dir))
    assert len(plane.authority.trust_bundle()) == 1 and not (ca_dir / "previous").exists()


def test_the_end_of_an_overlap_retires_the_root_and_its_files(tmp_path: Path) -> None:
    ca_dir = tmp_path / "ca"
    plane = CaPlane(CaOptions(TRUST, ca_dir))
    clock = Clock(time.time())
    plane.authority.clock = clock
    changes = heard(plane.rotation)
    plane.rotation.stage()
    plane.rotation.rotate(overlap=60.0)
    assert (ca_dir / "previous").exists() and len(changes[-1].roots) == 2
    clock.now += 59
    assert not plane.rotation.check() and (ca_dir / "previous").exists()
    clock.now += 2  # (run() looks every second)
    assert plane.rotation.check() and len(changes[-1].roots) == 1
    assert not (ca_dir / "previous").exists() and plane.rotation.status()["state"] == "steady"


def test_a_rotation_cut_short_is_finished_at_start(tmp_path: Path) -> None:
    ca_dir = tmp_path / "ca"
    plane = CaPlane(CaOptions(TRUST, ca_dir))
    old = plane.authority.issuer.cert
    plane.rotation.stage()
    staged = x509.load_pem_x509_certificate((ca_dir / "next" / CA_CERT).read_bytes())
    # As if killed halfway through the copy: previous/ complete, the marker written, only the
    # certificate copied (so the top-level files no longer fit together).
    shutil.copytree(ca_dir, tmp_path / "previous", ignore=shutil.ignore_patterns("next"))
    shutil.move(tmp_path / "previous", ca_dir / "previous")
    (ca_dir / "previous" / RETIRE_AFTER).write_text("2099-01-01T00:00:00Z\n")
    (ca_dir / ROTATING).write_text("")
    shutil.copy(ca_dir / "next" / CA_CERT, ca_dir / CA_CERT)
    plane = CaPlane(CaOptions(TRUST, ca_dir))
    assert plane.authority.issuer.cert == staged and plane.authority.trust_bundle() == [staged, old]
    assert not (ca_dir / ROTATING).exists() and not (ca_dir / "next").exists()


def unchanged(rotation: RootRotation, before: list[x509.Certificate], signing: x509.Certificate) -> bool:
    return rotation.ca.trust_bundle() == before and rotation.ca.issuer.cert == signing


@pytest.mark.parametrize(("make_next", "reason"), [
    ("wrong_key", "not the key of ca-cert.pem"),
    ("other_domain", "is a CA of trust domain other.example, not test.local"),
    ("short_lived", "before the old root's overlap would end"),
    ("half", "ca-cert.pem without ca-key.pem"),
])
def test_a_next_ca_that_cannot_take_over_is_refused(tmp_path: Path, make_next: str, reason: str) -> None:
    ca_dir = tmp_path / "ca"
    plane = CaPlane(CaOptions(TRUST, ca_dir))
    nxt = ca_dir / "next"
    if make_next == "wrong_key":
        write_root(nxt, self_signed_root(TRUST))
        other = tmp_path / "other"
        write_root(other, self_signed_root(TRUST))
        shutil.copy(other / CA_KEY, nxt / CA_KEY)
    elif make_next == "other_domain":
        write_root(nxt, self_signed_root("other.example"))
    elif make_next == "short_lived":
        write_root(nxt, self_signed_root(TRUST, lifetime=24 * 3600.0))  # the overlap is 7 days and 1 minute
    else:
        write_root(nxt, self_signed_root(TRUST))
        (nxt / CA_KEY).unlink()
    before, signing = plane.authority.trust_bundle(), plane.authority.issuer.cert
    changes = heard(plane.rotation)
    with pytest.raises(RotationRefused, match=reason):
        plane.rotation.stage()
    assert unchanged(plane.rotation, before, signing) and changes == [] and plane.authority.staged is None
    # At start too: the control plane says what is wrong instead of trusting it.
    with pytest.raises(CaSetupError, match=reason):
        CaPlane(CaOptions(TRUST, ca_dir))


def test_next_changed_after_staging_is_not_rotated_to(tmp_path: Path) -> None:
    ca_dir = tmp_path / "ca"
    plane = CaPlane(CaOptions(TRUST, ca_dir))
    plane.rotation.stage()
    shutil.rmtree(ca_dir / "next")
    write_root(ca_dir / "next", self_signed_root(TRUST))
    signing = plane.authority.issuer.cert
    with pytest.raises(RotationRefused, match="changed since it was staged"):
        plane.rotation.rotate()
    assert plane.authority.issuer.cert == signing and not (ca_dir / "previous").exists()


async def ask_raw(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    out = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    await writer.wait_closed()
    return out


async def ask(port: int, request: bytes) -> tuple[int, dict[str, object]]:
    head, _, body = (await ask_raw(port, request)).partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


async def test_the_admin_ca_paths() -> None:
    ca = CertificateAuthority(self_signed_root(TRUST), trust_domain=TRUST)
    rotation = RootRotation(ca)
    cache = SnapshotCache()
    admin = ControlAdmin(AdsServer(cache), cache, {}, ca=CaAdmin(rotation, lambda: 3))
    server = await asyncio.start_server(admin.handle, "127.0.0.1", 0, limit=MAX_HEAD)
    port = server.sockets[0].getsockname()[1]

    def post(path: str) -> bytes:
        return f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n".encode()

    try:
        status, body = await ask(port, b"GET /ca HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status == 200 and body["state"] == "steady" and body["bundle_watchers"] == 3
        assert body["trust_domain"] == TRUST and body["ca_dir"] is None
        pem = await ask_raw(port, b"GET /ca/bundle.pem HTTP/1.1\r\nHost: x\r\n\r\n")
        assert x509.load_pem_x509_certificates(pem.partition(b"\r\n\r\n")[2]) == ca.trust_bundle()
        status, body = await ask(port, b"GET /ca/stage HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status == 405 and ca.staged is None  # a GET never changes anything
        status, body = await ask(port, post("/ca/rotate"))
        assert status == 409 and "nothing is staged" in str(body["error"])
        status, body = await ask(port, post("/ca/stage"))
        assert status == 200 and "staged a new root" in str(body["message"]) and ca.staged is not None
        status, body = await ask(port, post("/ca/rotate?overlap=soon"))
        assert status == 400 and "seconds expected" in str(body["error"]) and ca.staged is not None
        status, body = await ask(port, post("/ca/rotate?overlap=600"))
        assert status == 200 and body["status"]["state"] == "overlap"  # type: ignore[index]
        status, body = await ask(port, post("/ca/retire"))
        assert status == 200 and body["status"]["state"] == "steady"  # type: ignore[index]
    finally:
        server.close()
        await server.wait_closed()


def test_changes_to_the_ca_come_from_loopback_only() -> None:
    """The admin listener has no authentication and deployments open it to the cluster (for
    Prometheus): a peer elsewhere may read the CA's state, never stage or rotate a root."""
    ca = CertificateAuthority(self_signed_root(TRUST), trust_domain=TRUST)
    cache = SnapshotCache()
    admin = ControlAdmin(AdsServer(cache), cache, {}, ca=CaAdmin(RootRotation(ca)))
    status, _, body = admin.answer("/ca/stage", "POST", local=False)
    assert status == 403 and b"loopback only" in body and ca.staged is None
    assert admin.answer("/ca", "GET", local=False)[0] == 200
    assert admin.answer("/ca/stage", "POST", local=True)[0] == 200 and ca.staged is not None
    assert [is_loopback(p) for p in (("127.0.0.1", 1), ("::1", 1, 0, 0), ("10.0.0.7", 1), ("fe80::1%eth0", 1),
                                     None, ("not an address", 1))] == [True, True, False, False, False, False]
