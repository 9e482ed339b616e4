"""meshpy: a service-mesh data plane on asyncio and uvloop."""

from meshpy.xds.protos import install as _install_newer_protos

__version__ = "0.1.0"

# Before any module imports Envoy's protos: Envoy 1.40's definitions of the files xds-protos has older
# ones of (meshpy/xds/protos).
_install_newer_protos()
