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


KNOWN = (
    Known("test_listener_protocol_of_the_wrong_type_is_a_config_error", "TypeError",
          "meshpy_yaml.py:_listener", "unhashable"),
    Known("test_request_refused_in_its_head_leaves_no_active_request", "Finding", "", "request gauge off",
          ("http1_e2e", "http1_upstream")),  # (HTTP/1.1 only: a gauge off after HTTP/2 would be new)
    Known("test_unsolicited_101_is_not_forwarded", "Finding", "", "unsolicited 101"),
    Known("test_status_below_100_is_an_upstream_protocol_error", "Finding", "", "status below 100"),
    Known("test_goaway_with_an_error_after_a_request_in_one_read", "Finding", "",
          "in state ConnectionState.CLOSED"),
    Known("test_local_answer_on_a_stream_h2_closed_in_the_same_read", "Finding", "",
          r"StreamClosedError\(\d+\)"),
    Known("test_interim_answers_carry_no_body_and_no_framing", "Finding", "",
          r"(interim answer forwarded with framing|client cannot parse the proxy's answer)"
          r".*HTTP/1\.1 1\d\d "),
    Known("test_broken_body_of_a_pipelined_request_is_answered_in_turn", "Finding", "",
          r"(hang|out of order).*400 Bad Request.*connection: close.*HTTP/1\.1 \d{3} "),
)


def known(exc: BaseException, target: str = "") -> Known | None:
    if os.environ.get("FUZZ_REPORT_KNOWN"):
        return None
    return next((k for k in KNOWN if k.matches(exc, target)), None)
