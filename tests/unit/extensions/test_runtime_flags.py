"""Runtime-controlled switches of built-in filters (RuntimeFractionalPercent, RuntimeFeatureFlag): the
runtime key's value in the layered runtime over the config's default, read per request."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from envoy.config.core.v3 import base_pb2

from meshpy.extensions.runtime_flags import Flag, Fraction
from meshpy.runtime.snapshot import EMPTY, Layer, Snapshot
from meshpy.runtime.values import flatten


class FakeRequest:
    """What the switches ask of a request: its runtime snapshot."""

    def __init__(self, snap: Snapshot) -> None:
        self.runtime = snap


def snap(values: dict[str, Any]) -> Snapshot:
    return Snapshot((Layer("static", flatten(values)),))


def fraction(numerator: int, key: str = "") -> base_pb2.RuntimeFractionalPercent:
    msg = base_pb2.RuntimeFractionalPercent(runtime_key=key)
    msg.default_value.numerator = numerator
    return msg


def flag(value: bool, key: str = "") -> base_pb2.RuntimeFeatureFlag:
    msg = base_pb2.RuntimeFeatureFlag(runtime_key=key)
    msg.default_value.value = value
    return msg


def share(f: Fraction, s: Snapshot, n: int = 2000) -> float:
    req: Any = FakeRequest(s)
    return sum(f.on(req) for _ in range(n)) / n


def test_fractions_follow_the_runtime_over_their_default() -> None:
    assert share(Fraction(None, True), EMPTY) == 1.0 and share(Fraction(None, False), EMPTY) == 0.0
    assert share(Fraction(fraction(100, "k"), EMPTY), EMPTY) == 1.0
    assert share(Fraction(fraction(100, "k"), snap({"k": 0})), snap({"k": 0})) == 0.0
    off_by_default = Fraction(fraction(0, "k"), EMPTY)
    assert share(off_by_default, snap({"other": 5})) == 0.0
    assert 0.4 < share(off_by_default, snap({"k": {"numerator": 50}})) < 0.6
    assert share(Fraction(fraction(100), EMPTY), snap({"k": 0})) == 1.0  # no key: the default alone


def test_flags_follow_the_runtime_over_their_default() -> None:
    on: Any = FakeRequest(snap({"k": False}))
    assert Flag(flag(True, "k"), False).on(on) is False
    assert Flag(flag(True, "other"), False).on(on) is True
    assert Flag(None, True).on(on) is True and Flag(None, False).on(SimpleNamespace(runtime=EMPTY)) is False  # type: ignore[arg-type]
