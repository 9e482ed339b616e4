"""Envoy's layered runtime: values by key from static, disk, admin and RTDS layers, which the data
plane reads through one immutable Snapshot.

- `values`: how Envoy reads a value (a Struct flattened to dotted keys, a file's or an admin value's
  YAML) into a meshpy.model.runtime.Entry;
- `disk`: a disk layer's directory walk and the signature that tells its symlink was swapped;
- `features`: the feature flags and keys meshpy takes, and why it refuses the others;
- `snapshot`: `Snapshot` (get_bool / get_int / get_float / fraction) and Envoy's `/runtime` view;
- `loader`: `Runtime`, which holds the live Snapshot and rebuilds it on every change.

The keys meshpy reads: `overload.global_downstream_max_connections` and
`envoy.resource_limits.listener.<name>.connection_limit` (meshpy.transport.admission), the fault
filter's keys (meshpy.stack.guards), the local rate limit's filter_enabled / filter_enforced keys
(meshpy.stack.filter_chain) and `envoy.reloadable_features.http_reject_path_with_fragment`
(meshpy.stack.exchange).
"""

from meshpy.runtime.loader import Runtime
from meshpy.runtime.snapshot import EMPTY, Snapshot

__all__ = ["EMPTY", "Runtime", "Snapshot"]
