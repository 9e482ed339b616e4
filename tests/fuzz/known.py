"""Findings already reported whose fix lies outside the code the fuzzing work may change (see
docs/fuzzing.md). Each has a strict xfail regression test in test_fuzz_regressions.py, which starts
to fail (XPASS) the day the fix lands: then its entry here goes, and the xfail mark with it.

Runs do not report these again, or every short run would stop at the first of them;
FUZZ_REPORT_KNOWN=1 reports them all the same. An entry matches on the exception's type, the innermost
meshpy function it came from (not a line number: the files keep changing) and words of its message.
"""

from __future__ import annotations

import os
import re
import traceback
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Known:
    test: str  # the regression test in test_fuzz_regressions.py
    kind: str  # the exception's type name
    where: str  # "file.py:function" of the innermost meshpy frame; "" for any
    words: str  # a regular expression searched in the message
    targets: tuple[str, ...] = ()  # the targets it is known in; () for every one

    def matches(self, exc: BaseException, target: str = "") -> bool:
        if self.targets and target not in self.targets:
            return False
        if type(exc).__name__ != self.kind or re.search(self.words, str(exc), re.S) is None:
            return False
        if not self.where:
            return True
        frames = [f for f in traceback.extract_tb(exc.__traceback__) if "/meshpy/" in f.filename]
        return bool(frames) and f"{Path(frames[-1].filename).name}:{frames[-1].name}" == self.where


KNOWN: tuple[Known, ...] = ()  # every finding so far is fixed (test_fuzz_regressions.py)


def known(exc: BaseException, target: str = "") -> Known | None:
    if os.environ.get("FUZZ_REPORT_KNOWN"):
        return None
    return next((k for k in KNOWN if k.matches(exc, target)), None)
