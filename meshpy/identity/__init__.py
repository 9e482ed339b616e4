"""Workload identity: SPIFFE IDs, the CA's wire protocol, and the sidecar's side of getting and rotating
its X.509 SVID. The control plane's CA (control/ca.py) imports the shared parts from here, never the
other way round."""
