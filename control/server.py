"""`meshpy control`: the control plane process.

It watches its source (a directory of Envoy-native resources, or of meshpy YAML exported to them),
turns each good version of it into a checked snapshot and serves it over ADS. A bad version (a YAML or
proto error, or a snapshot that fails the consistency check) is logged with every error and not
pushed: clients keep the last good one.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from pathlib import Path

import grpc

from control.admin import MAX_HEAD, ControlAdmin
from control.ads import AdsServer, add_to_server
from control.cache import InconsistentSnapshot, NodeSelector, SnapshotCache, make_snapshot
from control.sources.envoy_dir import SourceError
from control.sources.meshpy_dir import load_meshpy_dir
from control.sources.nodes import Loader, envoy_layer, layered_fingerprint, load_layers

log = logging.getLogger("meshpy.control")

POLL_INTERVAL = 0.5  # seconds between looks at the source directory


def load_once(cache: SnapshotCache, source: Path, loads: dict[str, int] | None = None,
              loader: Loader = envoy_layer) -> bool:
    """Publish the directory's resources; False (and the old snapshot stays) if they are not good.
    `loads` counts the outcomes for /metrics."""
    ok = _load(cache, source, loader)
    if loads is not None:
        key = "accepted" if ok else "rejected"
        loads[key] = loads.get(key, 0) + 1
    return ok


def _load(cache: SnapshotCache, source: Path, loader: Loader) -> bool:
    try:
        layers = load_layers(source, loader)
        snap = make_snapshot(layers.shared)
        cache.publish(
            snap,
            {node: make_snapshot(r) for node, r in layers.by_node.items()},
            {NodeSelector(cluster=name): make_snapshot(r) for name, r in layers.by_cluster.items()},
        )
    except SourceError as err:
        for line in err.errors:
            log.error("%s: %s", source, line)
        return False
    except InconsistentSnapshot as err:
        for line in err.errors:
            log.error("%s: not pushed: %s", source, line)
        return False
    extra = len(layers.by_node) + len(layers.by_cluster)
    more = f" and {extra} per-node sets" if extra else ""
    log.info("%s: published version %s%s", source, snap.version, more)
    return True


async def watch_dir(cache: SnapshotCache, source: Path, loads: dict[str, int],
                    interval: float = POLL_INTERVAL, loader: Loader = envoy_layer) -> None:
    seen = layered_fingerprint(source)
    while True:
        await asyncio.sleep(interval)
        now = layered_fingerprint(source)
        if now != seen:
            seen = now
            load_once(cache, source, loads, loader)


async def serve(listen: str, source: Path, admin: str | None = None,
                poll_interval: float = POLL_INTERVAL, meshpy_format: bool = False) -> int:
    """`source` is a directory of Envoy-native resources, or of meshpy YAML when `meshpy_format`."""
    loader: Loader = load_meshpy_dir if meshpy_format else envoy_layer
    cache = SnapshotCache()
    loads: dict[str, int] = {}
    if not load_once(cache, source, loads, loader):
        log.error("%s: no good initial config; serving nothing until the source is fixed", source)
    ads = AdsServer(cache)
    # grpc sheds streams beyond 1,000 waiting to be picked up (3,000 hard): a fleet reconnecting at
    # once (a control-plane restart) would see a storm of CANCELLED; these only lift the shedding.
    server = grpc.aio.server(options=[("grpc.server.max_pending_requests", 20_000),
                                      ("grpc.server.max_pending_requests_hard_limit", 40_000)])
    add_to_server(ads, server)
    if server.add_insecure_port(listen) == 0:
        log.error("cannot listen on %s", listen)
        return 1
    admin_server = None
    if admin is not None:
        host, _, port = admin.rpartition(":")
        try:
            admin_server = await asyncio.start_server(ControlAdmin(ads, cache, loads).handle, host, int(port),
                                                      limit=MAX_HEAD)
        except (OSError, ValueError) as err:
            log.error("cannot listen on %s for the admin: %s", admin, err)
            return 1
    await server.start()
    log.info("ADS on %s, admin on %s, source %s", listen, admin or "-", source)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    watcher = asyncio.create_task(watch_dir(cache, source, loads, poll_interval, loader))
    try:
        await stop.wait()
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
        if admin_server is not None:
            admin_server.close()
        await server.stop(grace=1.0)
    return 0


def run_cli(args: argparse.Namespace) -> int:
    """`meshpy control` with its parsed options."""
    import uvloop

    if not (args.envoy_dir or args.meshpy_dir):
        print("meshpy control: a source is needed: --envoy-dir or --meshpy-dir", file=sys.stderr)
        return 2
    # On uvloop, as the proxy: the scale benchmark measured ~8% less CPU per push than on asyncio's
    # own loop (grpc.aio works on either).
    source = Path(args.envoy_dir or args.meshpy_dir)
    meshpy_format = args.meshpy_dir is not None
    return int(uvloop.run(serve(args.listen, source, args.admin, args.poll_interval, meshpy_format)))
