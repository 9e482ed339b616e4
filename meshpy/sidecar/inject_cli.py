"""`meshpy inject`: options and entry point (the work is in meshpy.sidecar.inject)."""

from __future__ import annotations

import argparse
import sys

import meshpy
from meshpy.identity.spiffe import DEFAULT_TOKEN_AUDIENCE
from meshpy.sidecar.inject import inject_text
from meshpy.sidecar.inject_pod import DEFAULT_CONTROL_PLANE, InjectError, InjectOptions, check_quantity


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-f", "--filename", default="-", help="manifest file ('-': standard input)")
    parser.add_argument("--image", default=f"meshpy:{meshpy.__version__}",
                        help="the sidecar's image (default %(default)s)")
    parser.add_argument("--control-plane", default=DEFAULT_CONTROL_PLANE, metavar="HOST:PORT",
                        help="the xDS server the proxies follow (default %(default)s)")
    parser.add_argument("--mode", choices=("native", "classic"), default="native",
                        help="native: an init container with restartPolicy Always (Kubernetes 1.29+); "
                             "classic: the first container. The annotation "
                             "sidecar.meshpy.io/nativeSidecar overrides it per workload (default native)")
    parser.add_argument("--trust-domain", default=None, metavar="DOMAIN",
                        help="give each sidecar its pod's identity (spiffe://DOMAIN/ns/<ns>/sa/<account>) "
                             "from the control plane's CA, proved by a projected service-account token "
                             "(default: none)")
    parser.add_argument("--token-audience", default=DEFAULT_TOKEN_AUDIENCE, metavar="AUDIENCE",
                        help="the audience of that token: one of meshpy control --token-audiences "
                             "(default %(default)s)")
    parser.add_argument("--no-probe-rewrite", dest="probe_rewrite", action="store_false",
                        help="keep the app's httpGet, tcpSocket and grpc probes as they are, instead of "
                             "sending them through the sidecar's probe port (which mutual TLS only, STRICT, "
                             "needs). The annotation sidecar.meshpy.io/rewriteAppHTTPProbers overrides it "
                             "per workload")
    parser.add_argument("--proxy-cpu", default="100m", help="the proxy's CPU request (default %(default)s)")
    parser.add_argument("--proxy-cpu-limit", default=None, help="the proxy's CPU limit (default none)")
    parser.add_argument("--proxy-memory", default="128Mi",
                        help="the proxy's memory request (default %(default)s)")
    parser.add_argument("--proxy-memory-limit", default="512Mi",
                        help="the proxy's memory limit (default %(default)s)")


def _options(args: argparse.Namespace) -> InjectOptions:
    for flag in ("proxy_cpu", "proxy_cpu_limit", "proxy_memory", "proxy_memory_limit"):
        value = getattr(args, flag)
        if value is not None:
            check_quantity(value, "--" + flag.replace("_", "-"))
    return InjectOptions(
        image=args.image,
        control_plane=args.control_plane,
        native=args.mode == "native",
        proxy_cpu=args.proxy_cpu,
        proxy_cpu_limit=args.proxy_cpu_limit,
        proxy_memory=args.proxy_memory,
        proxy_memory_limit=args.proxy_memory_limit,
        trust_domain=args.trust_domain,
        token_audience=args.token_audience,
        rewrite_probes=args.probe_rewrite,
    )


def run(args: argparse.Namespace) -> int:
    try:
        options = _options(args)
    except InjectError as err:
        print(f"meshpy inject: {err}", file=sys.stderr)
        return 2
    source = "<stdin>" if args.filename == "-" else args.filename
    try:
        if args.filename == "-":
            text = sys.stdin.read()
        else:
            with open(args.filename, encoding="utf-8") as f:
                text = f.read()
        result = inject_text(text, options)
    except (InjectError, OSError, UnicodeDecodeError) as err:
        print(f"meshpy inject: {source}: {err}", file=sys.stderr)
        return 1
    for note in result.notes:
        print(f"meshpy inject: {source}: {note}", file=sys.stderr)
    # All or nothing: the output is written only once every document went through.
    sys.stdout.write(result.text)
    sys.stdout.flush()
    return 0
