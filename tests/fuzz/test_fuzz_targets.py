"""The short fuzzing run of `make test`: every target replays its committed corpus (tests/fuzz/corpus),
then mutates it for FUZZ_SHORT_SECONDS (default 3.5 s a target; 0: replay only). A failure names the
input and, with its traceback, writes it under .fuzz/findings/<target>/ (see docs/fuzzing.md: such an
input becomes a `regress-*` corpus file and a test in test_fuzz_regressions.py).

FUZZ_SEED fixes the mutation sequence (the default is the target's own fixed seed, so a run differs
from the last only by how many inputs fit in the time); the end-to-end targets replay a sample of the
corpus (FUZZ_E2E_REPLAY inputs, default 30, and every `regress-*` input) to stay within the budget.
"""

from __future__ import annotations

import contextlib
import os
import zlib

import fuzzkit
import pytest
from fuzz_run import MODULES, load

E2E_REPLAY = int(os.environ.get("FUZZ_E2E_REPLAY", "30"))


def _sample(target: fuzzkit.Target) -> list[tuple[str, bytes]]:
    inputs = fuzzkit.corpus(target.corpus_name)
    if target.context is None or len(inputs) <= E2E_REPLAY:
        return inputs
    regress = [i for i in inputs if i[0].startswith("regress-")]
    rest = [i for i in inputs if not i[0].startswith("regress-")]
    step = max(1, len(rest) // E2E_REPLAY)
    return regress + rest[::step][:E2E_REPLAY]


@pytest.mark.parametrize("name", list(MODULES))
def test_fuzz(name: str) -> None:
    target = load(name, instrument=False)
    inputs = _sample(target)
    assert inputs, f"no committed corpus for {target.corpus_name}"
    seed = int(os.environ.get("FUZZ_SEED", "0")) or zlib.crc32(name.encode())
    with target.context() if target.context else contextlib.nullcontext():
        failed = fuzzkit.replay(target, inputs)
        assert not failed, "corpus inputs fail:\n" + fuzzkit.describe(
            [(dict(inputs)[n], exc) for n, exc in failed])
        if fuzzkit.SHORT_SECONDS > 0:
            report = fuzzkit.fuzz(target, fuzzkit.SHORT_SECONDS, seed, [d for _, d in inputs],
                                  record_to=fuzzkit.FINDINGS)
            assert report.execs > 0
            assert not report.findings, (f"{report.summary()} (FUZZ_SEED={seed}); inputs written under "
                                         f"{fuzzkit.FINDINGS / name}:\n" + fuzzkit.describe(report.findings))
