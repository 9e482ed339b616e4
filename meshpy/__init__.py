"""meshpy: a service-mesh data plane on asyncio and uvloop."""

__version__ = "0.1.0"
