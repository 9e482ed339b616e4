"""meshpy control plane: declared intent in, Envoy xDS v3 (ADS) out."""

# First: its modules import Envoy's protos, and meshpy loads Envoy 1.40's definitions of a few of them
# (meshpy/xds/protos) in place of xds-protos' older ones.
import meshpy  # noqa: F401
