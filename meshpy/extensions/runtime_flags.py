"""Envoy's runtime-controlled switches in filter configs, read per request as Envoy reads them: a
RuntimeFractionalPercent (`{default_value: {numerator, denominator}, runtime_key}`: on for a share of
requests, the key's value in the layered runtime over the default) and a RuntimeFeatureFlag
(`{default_value: bool, runtime_key}`: the key's boolean over the default). Without a runtime key, or
while no runtime layer sets it, the default applies; a switch that is always on or always off costs
nothing per request."""

from __future__ import annotations

import random
from typing import Any

from meshpy.filters import Request

_DENOMINATORS = {0: 100, 1: 10_000, 2: 1_000_000}  # FractionalPercent.DenominatorType


class Fraction:
    """A RuntimeFractionalPercent (`msg` None: unset, then `unset` says whether it is on)."""

    __slots__ = ("default", "key")

    def __init__(self, msg: Any | None, unset: bool) -> None:
        if msg is None:
            self.key, self.default = "", 1.0 if unset else 0.0
            return
        value = msg.default_value
        self.key = msg.runtime_key
        self.default = value.numerator / _DENOMINATORS.get(value.denominator, 100)

    def on(self, request: Request) -> bool:
        share = self.default
        if self.key:
            snap = request.runtime
            if snap.values:
                share = snap.fraction(self.key, share)
        if share >= 1.0:
            return True
        return share > 0.0 and random.random() < share


class Flag:
    """A RuntimeFeatureFlag (`msg` None: unset, then `unset` is its value)."""

    __slots__ = ("default", "key")

    def __init__(self, msg: Any | None, unset: bool) -> None:
        self.key = msg.runtime_key if msg is not None else ""
        self.default = bool(msg.default_value.value) if msg is not None else unset

    def on(self, request: Request) -> bool:
        if self.key:
            snap = request.runtime
            if snap.values:
                return snap.get_bool(self.key, self.default)
        return self.default


def field(msg: Any, name: str) -> Any | None:
    """The message field `name` of `msg`, or None when it is unset."""
    return getattr(msg, name) if msg.HasField(name) else None
