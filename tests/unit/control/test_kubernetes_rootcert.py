"""The ConfigMap meshpy-ca-root-cert in every namespace (control/sources/kubernetes_rootcert.py), written
by the control plane's Kubernetes client to the fake API server of tests/kubeapi.py over real HTTP, with
the roots of a real CA and its rotation (control/ca_rotation.py)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from kubeapi import CONFIGMAPS, NAMESPACES, FakeKubeApi, write_kubeconfig
from kubeobjects import config_map, namespace

from control.ca import CertificateAuthority, pem
from control.ca_files import self_signed_root
from control.ca_rotation import RootRotation
from control.sources import kubernetes_cli
from control.sources.kubernetes import api_client
from control.sources.kubernetes_rootcert import MANAGED_BY, MANAGER, RootCertCollector, RootCertWriter
from control.sources.kubernetes_watch import Backoff
from meshpy.cli import main
from meshpy.sidecar.inject_pod import ROOT_CONFIG_MAP, ROOT_FILE

NAME = ROOT_CONFIG_MAP
OLD_ROOT = pem(self_signed_root("cluster.local").cert)  # a root an operator once put there by hand


@dataclass
class World:
    api: FakeKubeApi
    ca: CertificateAuthority
    rotation: RootRotation
    writer: RootCertWriter

    def bundle(self) -> str:
        return "".join(self.ca.trust_bundle_pem())

    def data(self, ns: str) -> str | None:
        cm = self.api.store[CONFIGMAPS].get((ns, NAME))
        return None if cm is None else cm.get("data", {}).get(ROOT_FILE)

    def writes(self, ns: str, method: str | None = None) -> int:
        return sum(1 for m, path in self.api.writes if f"/namespaces/{ns}/" in path and m != "GET"
                   and method in (None, m))

    async def until(self, check: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            if time.monotonic() > deadline:
                raise AssertionError(f"not within {timeout}s: {what}")
            await asyncio.sleep(0.01)

    async def everywhere(self, *namespaces: str) -> None:
        await self.until(lambda: all(self.data(ns) == self.bundle() for ns in namespaces),
                         f"the bundle in {', '.join(namespaces)}")


@contextlib.asynccontextmanager
async def start(tmp_path: Path, scoped: tuple[str, ...] = (), writes: tuple[float, float] = (0.05, 0.4),
                prepare: Callable[[FakeKubeApi], Any] | None = None) -> AsyncIterator[World]:
    api = await FakeKubeApi().start()
    for ns in ("shop", "billing", "kube-system"):
        api.apply(NAMESPACES, namespace(ns))
    api.apply(NAMESPACES, namespace("leaving", terminating=True))
    # Kubernetes' own ConfigMap, which the writer must not even see (its watch selects one name).
    api.apply(CONFIGMAPS, config_map("kube-root-ca.crt", "shop", {"ca.crt": "x"}))
    if prepare is not None:
        prepare(api)
    client = await api_client(str(write_kubeconfig(tmp_path / "kubeconfig", api.port)))
    ca = CertificateAuthority(self_signed_root("cluster.local"))
    rotation = RootRotation(ca)
    writer = RootCertWriter(client, ca.trust_bundle_pem, namespaces=scoped, watch_seconds=30,
                            backoff=lambda: Backoff(0.05, 0.4), write_backoff=lambda: Backoff(*writes),
                            debounce=0.02)
    rotation.listeners.append(writer.bundle_changed)  # as control/server.py does
    task = asyncio.create_task(writer.run())
    try:
        yield World(api, ca, rotation, writer)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await client.close()
        await api.stop()


@pytest_asyncio.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    def hand_made(api: FakeKubeApi) -> None:
        api.apply(CONFIGMAPS, config_map(NAME, "shop", {ROOT_FILE: OLD_ROOT}, labels={"team": "shop"}))

    async with start(tmp_path, prepare=hand_made) as w:
        yield w


async def test_every_namespace_gets_the_bundle_once_and_one_being_deleted_none(world: World) -> None:
    await world.everywhere("shop", "billing", "kube-system")
    assert world.writes("leaving") == 0  # the API would refuse it (403: being terminated)
    for ns in ("shop", "billing", "kube-system"):
        cm = world.api.store[CONFIGMAPS][(ns, NAME)]
        assert cm["metadata"]["labels"][MANAGED_BY] == MANAGER
        assert set(cm["data"]) == {ROOT_FILE}
    # The one made by hand is taken over (replaced, its labels kept); the others are created.
    assert world.api.store[CONFIGMAPS][("shop", NAME)]["metadata"]["labels"]["team"] == "shop"
    assert (world.writes("shop", "PUT"), world.writes("shop", "POST")) == (1, 0)
    assert (world.writes("billing", "POST"), world.writes("billing", "PUT")) == (1, 0)
    # Its own writes come back on the watch: they change nothing, so nothing is written again.
    await asyncio.sleep(0.3)
    assert len(world.api.writes) == 3
    # Only the ConfigMaps of that name are watched (fieldSelector), not every ConfigMap of the cluster.
    (reflector,) = world.writer.config_maps
    assert {name for _, name in reflector.objects} == {NAME}
    assert all(q.get("fieldSelector") == f"metadata.name={NAME}" for q in world.api.list_requests(CONFIGMAPS))


async def test_a_new_namespace_gets_it_and_a_deleted_namespace_is_forgotten(world: World) -> None:
    await world.everywhere("shop", "billing")
    world.api.apply(NAMESPACES, namespace("payments"))
    await world.everywhere("payments")
    world.api.apply(NAMESPACES, namespace("payments", terminating=True))
    world.api.delete(CONFIGMAPS, "payments", NAME)  # the namespace controller empties it
    world.api.apply(NAMESPACES, namespace("ads"))
    await world.everywhere("ads")
    assert world.data("payments") is None and world.writes("payments") == 1


async def test_an_edited_or_deleted_config_map_is_put_back(world: World) -> None:
    await world.everywhere("shop", "billing")
    edited = dict(world.api.store[CONFIGMAPS][("billing", NAME)])
    edited["data"] = {ROOT_FILE: OLD_ROOT, "extra": "x"}
    world.api.apply(CONFIGMAPS, edited)
    await world.until(lambda: world.api.store[CONFIGMAPS][("billing", NAME)]["data"] == {
        ROOT_FILE: world.bundle()}, "the edit undone")
    world.api.delete(CONFIGMAPS, "billing", NAME)
    await world.everywhere("billing")
    unlabelled = dict(world.api.store[CONFIGMAPS][("billing", NAME)])
    unlabelled["metadata"] = {**unlabelled["metadata"], "labels": {}}
    world.api.apply(CONFIGMAPS, unlabelled)
    await world.until(lambda: world.api.store[CONFIGMAPS][("billing", NAME)]["metadata"]["labels"] == {
        MANAGED_BY: MANAGER}, "its label back")


async def test_stage_rotate_and_retire_reach_every_namespace(world: World) -> None:
    await world.everywhere("shop", "billing", "kube-system")
    first = world.bundle()
    world.rotation.stage()
    assert len(world.ca.trust_bundle()) == 2
    await world.everywhere("shop", "billing", "kube-system")
    assert world.data("billing") == first + pem(world.ca.trust_bundle()[1])  # the staged root after
    staged = world.bundle()
    world.rotation.rotate()  # the new root signs: it comes first, the old one stays for the overlap
    assert world.bundle() != staged
    await world.everywhere("shop", "billing", "kube-system")
    world.rotation.retire()
    assert len(world.ca.trust_bundle()) == 1 and world.bundle() != first
    await world.everywhere("shop", "billing", "kube-system")


@pytest.mark.parametrize(("code", "said"), [(403, "403 Forbidden"), (409, "409 Conflict")])
async def test_a_refused_write_is_said_once_and_tried_again_until_it_passes(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, code: int, said: str) -> None:
    caplog.set_level(logging.INFO, "meshpy.control.kubernetes")
    async with start(tmp_path, prepare=lambda api: api.deny("billing", code)) as world:
        await world.everywhere("shop", "kube-system")  # the others are not held up
        await world.until(lambda: world.writes("billing") >= 4, "tried again")
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "billing" in
                    r.getMessage()]
        assert len(warnings) == 1, warnings
        assert said in warnings[0] and NAME in warnings[0]
        world.api.allow("billing")
        await world.everywhere("billing")
        assert any("billing written after " + said in r.getMessage() for r in caplog.records)


async def test_scoped_to_namespaces_it_lists_no_namespace_and_waits_for_a_missing_one(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "meshpy.control.kubernetes")
    async with start(tmp_path, scoped=("shop", "later")) as world:
        await world.everywhere("shop")
        await world.until(lambda: world.writes("later") >= 3, "the missing namespace tried again")
        assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "later" in
                r.getMessage() and "404 NotFound" in r.getMessage()] != []
        world.api.apply(NAMESPACES, namespace("later"))
        await world.everywhere("later")
        assert world.data("billing") is None  # not watched
        assert world.api.list_requests(NAMESPACES) == []
        paths = {path for path, _, _ in world.api.requests if path.endswith("/configmaps")}
        assert paths == {"/api/v1/namespaces/shop/configmaps", "/api/v1/namespaces/later/configmaps"}


async def test_a_write_race_is_read_again_and_won(tmp_path: Path) -> None:
    """A copy gone stale (someone wrote after the list), and a create that finds one made meanwhile."""
    api = await FakeKubeApi().start()
    client = await api_client(str(write_kubeconfig(tmp_path / "kubeconfig", api.port)))
    try:
        api.apply(NAMESPACES, namespace("shop"))
        api.apply(NAMESPACES, namespace("billing"))
        api.apply(CONFIGMAPS, config_map(NAME, "shop", {ROOT_FILE: OLD_ROOT}))
        ca = CertificateAuthority(self_signed_root("cluster.local"))
        writer = RootCertWriter(client, ca.trust_bundle_pem)
        for reflector in writer.reflectors:
            await reflector.list()  # what a start lists, without the watches that would catch up
        api.apply(CONFIGMAPS, config_map(NAME, "shop", {ROOT_FILE: "edited"}))  # a newer version
        api.apply(CONFIGMAPS, config_map(NAME, "billing", {ROOT_FILE: OLD_ROOT}))  # a new one
        assert await writer.sync() == 2
        bundle = "".join(ca.trust_bundle_pem())
        assert {ns: cm["data"] for (ns, _), cm in api.store[CONFIGMAPS].items()} == {
            "shop": {ROOT_FILE: bundle}, "billing": {ROOT_FILE: bundle}}
        assert [m for m, p in api.writes if "/shop/" in p] == ["PUT", "GET", "PUT"]  # 409 Conflict first
        assert [m for m, p in api.writes if "/billing/" in p] == ["POST", "GET", "PUT"]  # 409 AlreadyExists
        assert writer.writes == {"created": 0, "replaced": 2, "failed": 0}
        assert await writer.sync() == 0  # its copy is what it wrote: nothing more to do
    finally:
        await client.close()
        await api.stop()


async def test_a_second_writer_with_another_root_is_answered_ever_more_slowly(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Two control planes with their own roots (a rolling update) would rewrite each other at once,
    forever: this one backs off, and says so once."""
    caplog.set_level(logging.INFO, "meshpy.control.kubernetes")
    async with start(tmp_path, writes=(0.1, 1.0), prepare=lambda api: [
            api.delete(NAMESPACES, "", ns) for ns in ("billing", "kube-system")]) as world:
        await world.everywhere("shop")
        rival = pem(self_signed_root("cluster.local").cert)

        async def other_control_plane() -> None:
            while True:
                cm = world.api.store[CONFIGMAPS].get(("shop", NAME))
                if cm is not None and cm["data"] != {ROOT_FILE: rival}:
                    world.api.apply(CONFIGMAPS, {**cm, "data": {ROOT_FILE: rival}})
                await asyncio.sleep(0.005)

        before = world.writes("shop")
        task = asyncio.create_task(other_control_plane())
        await asyncio.sleep(2.0)
        task.cancel()
        # Unchecked, a write every few milliseconds; backing off from 0.1 s doubling to 1 s: a handful.
        assert 2 <= world.writes("shop") - before <= 8, world.writes("shop") - before
        said = [r.getMessage() for r in caplog.records if "changed again" in r.getMessage()]
        assert len(said) == 1, said
        await world.everywhere("shop")  # the rival gone, it is put back


def test_the_flag_turns_it_off_and_belongs_to_kubernetes(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    kubernetes_cli.add_arguments(parser)
    on = kubernetes_cli.options(parser.parse_args(["--kubernetes"]))
    off = kubernetes_cli.options(parser.parse_args(["--kubernetes", "--no-kubernetes-root-cert"]))
    assert on is not None and on.root_cert and off is not None and not off.root_cert
    assert main(["control", "--envoy-dir", ".", "--no-kubernetes-root-cert"]) == 2
    assert "--no-kubernetes-root-cert are options of --kubernetes" in capsys.readouterr().err


async def test_the_writes_are_counted_for_metrics(world: World) -> None:
    await world.everywhere("shop", "billing", "kube-system")
    (family,) = RootCertCollector(world.writer).collect()
    counts = {s.labels["outcome"]: s.value for s in family.samples if s.name.endswith("_total")}
    assert counts == {"created": 2, "replaced": 1, "failed": 0}


async def test_the_fake_api_answers_writes_as_the_real_one() -> None:
    """What the writer is tested against must hold: tests/kubeapi_writes.py's statuses and reasons."""
    import aiohttp

    api = await FakeKubeApi().start()
    api.apply(NAMESPACES, namespace("shop"))
    api.apply(NAMESPACES, namespace("leaving", terminating=True))
    base = f"http://127.0.0.1:{api.port}/api/v1/namespaces"
    body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": NAME}, "data": {ROOT_FILE: "a"}}
    try:
        async with aiohttp.ClientSession() as http:
            async def call(method: str, path: str, json: Any = None) -> tuple[int, dict[str, Any]]:
                async with http.request(method, base + path, json=json) as r:
                    return r.status, await r.json()

            code, made = await call("POST", "/shop/configmaps", body)
            assert code == 201 and made["metadata"]["namespace"] == "shop" and made["metadata"]["uid"]
            assert (await call("POST", "/shop/configmaps", body))[1]["reason"] == "AlreadyExists"
            assert (await call("POST", "/nowhere/configmaps", body))[0] == 404
            assert (await call("POST", "/leaving/configmaps", body))[1]["reason"] == "Forbidden"
            assert await call("GET", f"/shop/configmaps/{NAME}") == (200, made)
            assert (await call("GET", "/shop/configmaps/other"))[0] == 404
            stale = {**made, "data": {ROOT_FILE: "b"}}
            code, replaced = await call("PUT", f"/shop/configmaps/{NAME}", stale)
            assert code == 200 and int(replaced["metadata"]["resourceVersion"]) > int(
                made["metadata"]["resourceVersion"])
            code, status = await call("PUT", f"/shop/configmaps/{NAME}", stale)  # made's version: old now
            assert (code, status["reason"]) == (409, "Conflict")
            assert (await call("PUT", "/shop/configmaps/other", {**body, "metadata": {"name": "other"}}))[0] \
                == 404  # an update never creates a ConfigMap
            api.deny("shop")
            assert (await call("PUT", f"/shop/configmaps/{NAME}", replaced))[1]["reason"] == "Forbidden"
            listed = await call("GET", f"/shop/configmaps?fieldSelector=metadata.name%3D{NAME}")
            assert [i["data"] for i in listed[1]["items"]] == [{ROOT_FILE: "b"}]
            other = await call("GET", "/shop/configmaps?fieldSelector=metadata.name%3Dother")
            assert other[1]["items"] == []
    finally:
        await api.stop()
