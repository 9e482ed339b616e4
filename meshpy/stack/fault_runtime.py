"""The fault filter's decision when a layered runtime has values: Envoy 1.40's FaultFilter reads.

For each request with a fault (the filter's own config and a route's alike):
- delay: on for the share `fault.http.delay.fixed_delay_percent` says (a number is a percentage, a
  fractional percent a fraction; absent: the configured percentage), lasting
  `fault.http.delay.fixed_duration_ms` (absent: the configured delay; 0: no delay);
- abort: on for the share `fault.http.abort.abort_percent` says, with the status
  `fault.http.abort.http_status` (absent: the configured one);
- a request that names its downstream cluster (`x-envoy-downstream-service-cluster: C`) reads
  `fault.http.C.delay.fixed_delay_percent` and `fault.http.C.abort.abort_percent` instead of the two
  percentage keys (their default is the configured percentage, not the general key), and
  `fault.http.C.delay.fixed_duration_ms` / `fault.http.C.abort.http_status` over the general ones;
- the HTTPFault may name other keys for the general ones (abort_percent_runtime, ...: FaultKeys).
A status outside 200-999 from the runtime is not sent (Envoy would write it into the status line
as is); the configured one is.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from meshpy.model.routes import Fault
    from meshpy.runtime.snapshot import Snapshot

DOWNSTREAM_CLUSTER = b"x-envoy-downstream-service-cluster"


def runtime_plan(fault: Fault, snap: Snapshot, headers: Sequence[tuple[bytes, bytes]], delay: float | None,
                 delay_pct: float, abort: int | None, abort_pct: float) -> tuple[float | None, int | None]:
    """(delay in seconds, abort status) for one request, from what the config and the request's fault
    headers gave (`delay`, `abort`: None where there is none to inject)."""
    keys = fault.keys
    cluster = next((v.decode("latin-1") for n, v in headers if n == DOWNSTREAM_CLUSTER), None)
    own = f"fault.http.{cluster}." if cluster is not None else ""
    if delay is not None:
        key = own + "delay.fixed_delay_percent" if own else keys.delay_percent
        share = snap.fraction(key, delay_pct / 100)
        if share >= 1.0 or random.random() < share:
            ms = snap.get_int(keys.delay_duration, round(delay * 1000))
            if own:
                ms = snap.get_int(own + "delay.fixed_duration_ms", ms)
            delay = ms / 1000 if ms > 0 else None
        else:
            delay = None
    if abort is not None:
        key = own + "abort.abort_percent" if own else keys.abort_percent
        share = snap.fraction(key, abort_pct / 100)
        if share >= 1.0 or random.random() < share:
            status = snap.get_int(keys.abort_status, abort)
            if own:
                status = snap.get_int(own + "abort.http_status", abort)
            abort = status if 200 <= status <= 999 else abort
        else:
            abort = None
    return delay, abort
