"""meshpy.malloc_tuning: buffers of a few hundred KiB, freed and made again, reuse the same memory
instead of costing fresh pages (a page fault each) every time."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

# Buffers of 16 to 256 KiB, three alive at a time, as a stream's reads and DATA come and go: the pages
# faulted in while 3,000 of them are made.
PROBE = """
import random, resource, sys
if sys.argv[1] == "tune":
    from meshpy import malloc_tuning
    assert malloc_tuning.tune()
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
rnd = random.Random(1)
live = []
f0 = faults()
for _ in range(3000):
    live.append(bytes(rnd.randrange(16, 256) * 1024))
    if len(live) > 3:
        live.pop(0)
print(faults() - f0)
"""


def faults(mode: str, **env: str) -> int:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], check=True, capture_output=True, text=True,
                         env={**os.environ, **env}, timeout=60)
    return int(out.stdout)


@pytest.mark.skipif(sys.platform != "linux", reason="glibc's allocator")
def test_freed_buffers_are_reused_without_page_faults() -> None:
    untuned, tuned = faults("plain"), faults("tune")
    assert untuned > 5_000  # (about 18,000 here: glibc hands memory back and takes it again)
    assert tuned < 2_000, (tuned, untuned)  # (about 300)


def test_settings_from_the_environment_are_left_alone() -> None:
    from meshpy import malloc_tuning

    env = {**os.environ, "MALLOC_TRIM_THRESHOLD_": "131072"}
    code = "from meshpy import malloc_tuning; print(malloc_tuning.tune())"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, env=env,
                         timeout=60)
    assert out.stdout.strip() == "False"
    assert malloc_tuning.MMAP_THRESHOLD < malloc_tuning.TRIM_THRESHOLD
