"""`meshpy run` with a memory probe, for the soak's `--object-counts` (finding what grows, not measuring):

    python benchmarks/soak_memprobe.py OUT_PREFIX [--tracemalloc] run -c meshpy.yaml ...

The proxy runs in this process exactly as `python -m meshpy run ...` would, plus a SIGUSR2 handler that
writes OUT_PREFIX.N.json (N = 1, 2, ...) after a full collection: the live objects the garbage collector
tracks by type, the largest containers (a list or dict that grows stays one object), the blocks
Python's allocator holds (flat blocks under a growing RSS point below Python: fragmentation, C code),
and with --tracemalloc the source lines whose allocations grew since the first dump. Two dumps, one
after the warm-up and one at the end, say what grew. A dump pauses the proxy for a fraction of a second
(more with --tracemalloc, which also slows every allocation: a diagnosis, not a measurement).
"""

from __future__ import annotations

import gc
import json
import signal
import sys
import tracemalloc
from collections import Counter, deque
from types import FrameType
from typing import Any

SIZED = (list, dict, set, deque, bytearray)


def _largest(objects: list[Any], n: int = 15) -> list[dict[str, Any]]:
    sized = [o for o in objects if type(o) in SIZED]
    top = sorted(sized, key=len, reverse=True)[:n]
    out = []
    for o in top:
        sample = ""
        if isinstance(o, dict) and o:
            sample = repr(next(iter(o)))[:80]
        elif isinstance(o, (list, deque)) and o:
            sample = f"{type(o[0]).__module__}.{type(o[0]).__qualname__}"
        out.append({"type": type(o).__name__, "len": len(o), "sample": sample,
                    "referrers": [f"{type(r).__module__}.{type(r).__qualname__}"
                                  for r in gc.get_referrers(o)[:3] if r is not objects]})
    return out


def main() -> int:
    prefix, argv = sys.argv[1], sys.argv[2:]
    if argv[:1] == ["--tracemalloc"]:
        argv = argv[1:]
        tracemalloc.start(8)
    dumps = 0
    first: tracemalloc.Snapshot | None = None

    def dump(signum: int, frame: FrameType | None) -> None:
        nonlocal dumps, first
        dumps += 1
        gc.collect()
        objects = gc.get_objects()
        counts = Counter(f"{type(o).__module__}.{type(o).__qualname__}" for o in objects)
        out: dict[str, Any] = {"objects": len(objects), "garbage": len(gc.garbage),
                               "allocated_blocks": sys.getallocatedblocks(),
                               "largest": _largest(objects), "by_type": dict(counts.most_common(400))}
        del objects
        if tracemalloc.is_tracing():
            snap = tracemalloc.take_snapshot()
            snap = snap.filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)])
            if first is None:
                first = snap
            else:
                stats = snap.compare_to(first, "traceback")[:15]
                out["tracemalloc_growth"] = [{"size_diff": s.size_diff, "count_diff": s.count_diff,
                                              "traceback": s.traceback.format()[-8:]} for s in stats]
        with open(f"{prefix}.{dumps}.json", "w") as f:
            json.dump(out, f)

    signal.signal(signal.SIGUSR2, dump)
    from meshpy.cli import main as meshpy_main

    return int(meshpy_main(argv) or 0)


if __name__ == "__main__":
    sys.exit(main())
