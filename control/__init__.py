"""meshpy control plane: declared intent in, Envoy xDS v3 (ADS) out."""
