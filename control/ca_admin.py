"""The CA's paths on the control plane's admin listener: what `meshpy ca ...` talks to.

  GET  /ca          the signing CA, the trust bundle (each root's role: signing, staged, retiring), the
                    staged CA, when the overlap ends, and how many sidecars watch the bundle (JSON)
  GET  /ca/bundle.pem  the trust bundle as PEM: what the meshpy-ca-root-cert ConfigMap carries
  POST /ca/stage    stage the next CA (--ca-dir's next/, or a new root)
  POST /ca/rotate   sign with the staged CA; `?overlap=SECONDS` instead of the default overlap
  POST /ca/retire   end the overlap: old roots leave the trust bundle now

Changes are POST only, so that a scraper or a browser following links never rotates anything, and are
taken from loopback peers only (403 otherwise): the admin listener has no authentication, and a
deployment often opens it to the cluster for Prometheus, where any pod could otherwise stage its own
root. Operators run `meshpy ca ...` inside the control plane's pod (`kubectl exec`). A refusal is 409
with the reason; the CA is then unchanged.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs

from control.ca_rotation import RootRotation, RotationRefused

Answer = tuple[int, str, bytes]
JSON = "application/json"
PATHS = ("/ca", "/ca/bundle.pem", "/ca/stage", "/ca/rotate", "/ca/retire")


def _json(status: int, value: Any) -> Answer:
    return status, JSON, (json.dumps(value, indent=1) + "\n").encode()


class CaAdmin:
    def __init__(self, rotation: RootRotation, watchers: Callable[[], int] = lambda: 0) -> None:
        """`watchers`: how many sidecars watch the trust bundle now."""
        self.rotation, self.watchers = rotation, watchers

    def status(self) -> dict[str, Any]:
        return {**self.rotation.status(), "bundle_watchers": self.watchers()}

    def answer(self, method: str, target: str, local: bool = True) -> Answer | None:
        """The answer for a /ca path; None for any other path. `local`: the peer is on loopback."""
        path, _, query = target.partition("?")
        if path not in PATHS:
            return None
        if path in ("/ca", "/ca/bundle.pem"):
            if method not in ("GET", "HEAD"):
                return _json(405, {"error": "GET /ca and /ca/bundle.pem; POST /ca/stage, /ca/rotate, "
                                            "/ca/retire"})
            if path == "/ca/bundle.pem":
                return 200, "application/x-pem-file", "".join(self.rotation.ca.trust_bundle_pem()).encode()
            return _json(200, self.status())
        if method != "POST":
            return _json(405, {"error": f"{path} changes the CA: POST only"})
        if not local:
            return _json(403, {"error": f"{path} changes the CA: taken from loopback only (run `meshpy ca` "
                                        "in the control plane's pod)"})
        try:
            if path == "/ca/stage":
                message = self.rotation.stage()
            elif path == "/ca/rotate":
                message = self.rotation.rotate(_overlap(query))
            else:
                message = self.rotation.retire()
        except ValueError as err:
            return _json(400, {"error": str(err)})
        except RotationRefused as err:
            return _json(409, {"error": str(err), "status": self.status()})
        return _json(200, {"message": message, "status": self.status()})


def _overlap(query: str) -> float | None:
    values = parse_qs(query).get("overlap")
    if not values:
        return None
    try:
        seconds = float(values[-1])
    except ValueError:
        raise ValueError(f"overlap={values[-1]!r}: seconds expected") from None
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"overlap={values[-1]!r}: must be >= 0 seconds")
    return seconds
