"""Command line: argv -> run / validate / control / ca / iptables / inject / wait / drain / demo-upstream.
Nothing else lives here: each subcommand's options and work belong to the module it names."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

import meshpy
from meshpy.errors import ConfigError
from meshpy.model.types import DEFAULT_ADMIN, Config

if TYPE_CHECKING:
    from meshpy.identity.control_trust import ControlPlaneTrust
    from meshpy.identity.local import IdentityOptions
    from meshpy.sidecar.probes import ProbeServer


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="meshpy", description="A service-mesh data plane on asyncio and uvloop.")
    p.add_argument("--version", action="version", version=f"meshpy {meshpy.__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the proxy on a config file (meshpy YAML or Envoy bootstrap)")
    run.add_argument("config_file", nargs="?", help="config file (or use -c)")
    run.add_argument("-c", "--config", help="config file; the format (meshpy or Envoy) is detected")
    _node_arguments(run)
    run.add_argument(
        "--loop", choices=("uvloop", "asyncio"), default="uvloop", help="event loop (default uvloop)"
    )
    run.add_argument(
        "--drain-time", type=float, default=None, help="seconds listeners keep accepting after SIGTERM"
    )
    run.add_argument(
        "--grace-time", type=float, default=None, help="seconds requests in flight get after the drain"
    )
    run.add_argument(
        "--http2-codec", choices=("auto", "nghttp2", "h2"),
        default=os.environ.get("MESHPY_HTTP2_CODEC") or "auto",
        help="HTTP/2 codec where the config leaves it to auto: nghttp2 (libnghttp2, the default where it "
             "loads) or h2 (pure Python); default auto, or $MESHPY_HTTP2_CODEC")
    run.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    run.add_argument("--pid-file", metavar="FILE", help="write the process id here, for meshpy reload")
    xds = run.add_argument_group("xDS short form (instead of, or beside, a bootstrap's dynamic_resources)")
    xds.add_argument("--xds", metavar="HOST:PORT", help="the ADS server to follow")
    xds.add_argument("--node-id", help="this proxy's node id, as the control plane knows it")
    xds.add_argument("--node-cluster", default="", help="this proxy's node cluster (its service)")
    xds.add_argument("--xds-delta", action="store_true", help="incremental (delta) ADS")
    xds.add_argument("--xds-ca", metavar="FILE",
                     help="the control plane serves TLS (meshpy control --grpc-tls-names): its root "
                          "certificates (PEM), to check it with; xDS and the CA are then reached over TLS")
    xds.add_argument("--admin", metavar="HOST:PORT",
                     help=f"admin listener when no config file is given (default {DEFAULT_ADMIN})")

    ident = run.add_argument_group("mesh identity (a certificate from the mesh's CA, as secrets default and "
                                   "ROOTCA)")
    ident.add_argument("--identity", metavar="SPIFFE_ID",
                       help="this workload's SPIFFE ID: spiffe://<trust-domain>/ns/<namespace>/sa/<account>")
    ident.add_argument("--ca", metavar="HOST:PORT", help="the CA (default: the --xds server)")
    ident.add_argument("--ca-token", metavar="FILE", help="the token that proves the identity (read on each "
                       "request: a Kubernetes service-account token, or a bootstrap token)")
    ident.add_argument("--identity-ttl", type=float, metavar="SECONDS", help="the lifetime to ask for")

    from meshpy.sidecar.inject_probes import PROBE_PORT

    probes = run.add_argument_group("the app's kubelet probes, made by the proxy (meshpy inject sets them)")
    probes.add_argument("--app-probes", metavar="JSON", help="path -> original probe, as meshpy inject "
                        "writes it (default: $MESHPY_APP_PROBES); nothing listens without it")
    probes.add_argument("--probe-listen", metavar="HOST:PORT", default=f"0.0.0.0:{PROBE_PORT}",
                        help="where the kubelet asks for them (default %(default)s)")

    rel = sub.add_parser("reload", help="a running proxy reloads its config file (SIGHUP, by its pid file)")
    rel.add_argument("--pid-file", metavar="FILE", required=True, help="the file meshpy run --pid-file wrote")

    val = sub.add_parser("validate", help="check config files; print every error as `path: reason`")
    val.add_argument("files", nargs="*")
    val.add_argument("--envoy-dir", action="append", default=[], metavar="DIR",
                     help="a directory of Envoy resources, checked as meshpy control --envoy-dir loads it")
    val.add_argument("--meshpy-dir", action="append", default=[], metavar="DIR",
                     help="a directory of meshpy YAML, checked as meshpy control --meshpy-dir loads it")
    val.add_argument("--kubernetes", action="extend", nargs="+", default=[], metavar="FILE",
                     help="Kubernetes manifests: what meshpy control --kubernetes makes of their Services "
                          "and EndpointSlices, checked as a proxy checks it")
    val.add_argument("--cluster-domain", default="cluster.local", help="for --kubernetes cluster names")
    _node_arguments(val)

    ctl = sub.add_parser("control", help="the control plane: serve xDS (ADS) from a source of resources")
    ctl.add_argument("--listen", default="127.0.0.1:18000", help="address of the gRPC ADS server")
    source = ctl.add_mutually_exclusive_group()
    source.add_argument("--envoy-dir",
                        help="directory of Envoy-native resources (Listener, RouteConfiguration, Cluster, "
                             "ClusterLoadAssignment) in YAML, each with its @type")
    source.add_argument("--meshpy-dir",
                        help="directory of meshpy YAML (listeners and clusters, across any number of files)")
    # The Kubernetes source (Services and EndpointSlices), alone or beside a directory.
    from control.sources import kubernetes_cli

    kubernetes_cli.add_arguments(ctl)
    from control import ca_cli

    ca_cli.add_arguments(ctl)
    ctl.add_argument("--poll-interval", type=float, default=0.5,
                     help="seconds between looks at the source for changes")
    ctl.add_argument("--admin", default="127.0.0.1:18001",
                     help="address of the admin listener (/ready, /metrics, /nodes)")
    ctl.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))

    from control import ca_command

    ca_cmd = sub.add_parser("ca", help="rotate the mesh's root: stage, rotate, retire, status (through the "
                                       "control plane's admin)")
    ca_command.add_arguments(ca_cmd)

    ipt = sub.add_parser("iptables", help="install the nat rules that send a pod's TCP through its sidecar "
                                          "(run by an init container, as root)")
    ipt.add_argument("--dry-run", action="store_true", help="print the rules instead of installing them")
    ipt.add_argument("--cleanup", action="store_true", help="remove the rules this command installs")
    ipt.add_argument("--proxy-uid", type=int, default=10001,
                     help="the proxy's UID: its traffic is not captured")
    ipt.add_argument("--proxy-gid", type=int, default=None, help="the proxy's GID, also not captured")
    ipt.add_argument("--outbound-port", type=int, default=15001, help="the outbound listener's port")
    ipt.add_argument("--inbound-port", type=int, default=15006, help="the inbound listener's port")
    ipt.add_argument("--inbound-ports", default="*",
                     help="ports whose inbound connections are captured: '*' (all), '' (none) or a list")
    ipt.add_argument("--exclude-inbound-ports", default="15000", help="ports never captured inbound")
    ipt.add_argument("--exclude-outbound-ports", default="", help="destination ports never captured")
    ipt.add_argument("--exclude-cidrs", default="", help="destination CIDRs never captured (comma-separated)")
    ipt.add_argument("--ipv6", action="store_true", help="install the same rules with ip6tables too")
    ipt.add_argument("--backend", choices=("auto", "nft", "legacy"), default="auto",
                     help="iptables-nft or iptables-legacy (auto: the system's iptables)")

    from meshpy.sidecar import inject_cli, lifecycle_cli

    inj = sub.add_parser("inject", help="add the meshpy sidecar to the Pod templates of Kubernetes manifests")
    inject_cli.add_arguments(inj)
    wait = sub.add_parser("wait", help="wait until the proxy is ready (a postStart hook, a readiness probe)")
    lifecycle_cli.add_wait_arguments(wait)
    drain = sub.add_parser("drain", help="ask the proxy to start draining (a preStop hook)")
    lifecycle_cli.add_drain_arguments(drain)

    demo = sub.add_parser("demo-upstream", help="a small HTTP server to put meshpy in front of")
    demo.add_argument("--listen", default="127.0.0.1:18080", help="address to listen on")
    demo.add_argument("--name", default="demo", help="name reported in responses")
    demo.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    return p


def _node_arguments(p: argparse.ArgumentParser) -> None:
    """Envoy's command-line options for the bootstrap's node, over what an Envoy bootstrap says."""
    p.add_argument("--service-node", help="an Envoy bootstrap's node.id (as Envoy's --service-node)")
    p.add_argument("--service-cluster", help="an Envoy bootstrap's node.cluster (as Envoy's option)")
    p.add_argument("--service-zone", help="an Envoy bootstrap's node.locality.zone (as Envoy's option)")


def _set_node(args: argparse.Namespace) -> None:
    from meshpy.model.load import set_node_overrides

    set_node_overrides(args.service_node, args.service_cluster, args.service_zone)


def _run_loop(loop_name: str, coro_factory: object) -> int:
    assert callable(coro_factory)
    if loop_name == "uvloop":
        import uvloop

        return int(uvloop.run(coro_factory()))
    return int(asyncio.run(coro_factory()))


def _check_tls(config: Config) -> None:
    """Read every certificate, key and CA the config names, as the proxy will: a missing file, a key
    others may replace or one that does not match its certificate fails validation too."""
    from meshpy.model.secrets import names
    from meshpy.transport.tls_contexts import client_context, server_contexts

    # Contexts that name secrets (SDS, the proxy's own identity) are built when those arrive.
    for i, lm in enumerate(config.listeners):
        if names(lm):
            continue
        for j, chain in enumerate(lm.all_chains()):
            if chain.tls is not None:
                server_contexts(chain.tls, f"listeners[{i}]." + ("tls" if j == 0 else f"chains[{j - 1}].tls"))
    for i, c in enumerate(config.clusters):
        if c.tls is not None and not names(c):
            client_context(c.tls, f"clusters[{i}].tls")
    if config.xds is not None and config.xds.tls is not None:
        from meshpy.xds.ads_tls import WHERE

        client_context(config.xds.tls, WHERE)  # the bootstrap's ADS cluster: its files are read at start


def _validate(files: Sequence[str]) -> int:
    from meshpy.model.load import NOTHING_TO_SERVE, load_file
    from meshpy.routing.table import RouteTable
    from meshpy.stack.filter_chain import ChainBuilder
    from meshpy.stack.policy_runtime import PolicyClaims

    failed = False
    for path in files:
        try:
            config = load_file(path)
            # Compile the route tables and load the filters too: a regex, a rewrite or a filter class
            # that only fails there is still an error.
            for i, lm in enumerate(config.listeners):
                if lm.http is not None:
                    try:
                        claims = PolicyClaims()
                        chain = ChainBuilder(lm.http.filters, claims, lm.name)
                    except ConfigError as err:
                        raise ConfigError([type(x)(f"listeners[{i}].{x.path}", x.reason)
                                           for x in err.issues]) from err
                    try:
                        RouteTable(lm.http.route_config, policies=claims, chain=chain)
                    except ConfigError as err:
                        raise ConfigError(
                            [type(x)(f"listeners[{i}].route_config.{x.path}", x.reason) for x in err.issues]
                        ) from err
            _check_tls(config)
        except ConfigError as err:
            failed = True
            for issue in err.issues:
                print(f"{path}: {issue}")
        except OSError as err:
            failed = True
            print(f"{path}: {err.strerror or err}")
        else:
            kinds = f"{len(config.listeners)} listeners, {len(config.clusters)} clusters"
            if config.xds is not None:
                from meshpy.xds.config_sources import summary

                kinds += f", xDS from {summary(config.xds)}"
            print(f"{path}: ok ({config.source_format} format, {kinds})")
            if not config.listeners and config.xds is None:
                print(f"{path}: warning: {NOTHING_TO_SERVE}")
    return 1 if failed else 0


def _http2_codec(name: str) -> None:
    from meshpy.codec import h2session

    h2session.set_default(name)
    try:
        h2session.resolve(name)
    except h2session.CodecUnavailable as err:
        raise ValueError(f"--http2-codec {name}: {err}") from err


def _run(args: argparse.Namespace) -> int:
    from meshpy.model.types import Address, XdsSource
    from meshpy.model.yaml_values import parse_address
    from meshpy.runner import serve

    _set_node(args)

    path = args.config or args.config_file
    if not path and not args.xds:
        print("meshpy run: a config file is needed (meshpy run -c FILE), or --xds HOST:PORT", file=sys.stderr)
        return 2
    xds: XdsSource | None = None
    admin: Address | None = None
    try:
        if args.xds:
            from meshpy.xds.bootstrap import short_form

            server = _grpc_target(args.xds)
            if not args.node_id:
                raise ValueError("--node-id is required with --xds")
            xds = short_form(server, args.node_id, args.node_cluster, args.xds_delta)
        elif args.node_id or args.node_cluster or args.xds_delta:
            raise ValueError("--node-id, --node-cluster and --xds-delta go with --xds")
        if args.admin:
            if path:
                raise ValueError("--admin is for the short form; a config file sets its own admin address")
            admin = parse_address(args.admin, allow_unix=True)
        _http2_codec(args.http2_codec)
        identity = _identity(args)
        control_trust = _control_trust(args)
        probes = _probes(args)
    except ValueError as err:
        print(f"meshpy run: {err}", file=sys.stderr)
        return 2
    if args.pid_file:
        from meshpy import pidfile

        pidfile.write(args.pid_file)
    from meshpy import malloc_tuning

    malloc_tuning.tune()
    try:
        return _run_loop(args.loop, lambda: serve(path, args.drain_time, args.grace_time, xds, admin,
                                                  identity, control_trust, probes))
    finally:
        if args.pid_file:
            pidfile.remove(args.pid_file)


def _grpc_target(value: str) -> str:
    """A HOST:PORT flag, checked, or a Unix socket's (unix:PATH, unix:@NAME) as gRPC names it."""
    from meshpy.model.unix_address import grpc_target
    from meshpy.model.yaml_values import parse_address

    address = parse_address(value, allow_unix=True)
    return grpc_target(address) if address.path else value


def _identity(args: argparse.Namespace) -> IdentityOptions | None:
    """The mesh identity flags, checked (ValueError says what is wrong)."""
    if not args.identity:
        if args.ca or args.ca_token or args.identity_ttl is not None:
            raise ValueError("--ca, --ca-token and --identity-ttl go with --identity")
        return None
    from meshpy.identity.local import IdentityOptions
    from meshpy.identity.spiffe import SpiffeId

    spiffe_id = SpiffeId.parse(args.identity)
    ca = args.ca or args.xds
    if not ca:
        raise ValueError("--identity needs --ca HOST:PORT (or --xds, whose server is then the CA)")
    ca = _grpc_target(ca)
    if not args.ca_token:
        raise ValueError("--identity needs --ca-token FILE")
    if args.identity_ttl is not None and args.identity_ttl <= 0:
        raise ValueError("--identity-ttl must be > 0")
    return IdentityOptions(spiffe_id, ca, args.ca_token, args.identity_ttl)


def _probes(args: argparse.Namespace) -> ProbeServer | None:
    """The probe port, when the app's probes are given (ValueError says what is wrong with them)."""
    from meshpy.sidecar.inject_probes import PROBES_ENV

    text = args.app_probes if args.app_probes is not None else os.environ.get(PROBES_ENV)
    if not text:
        return None
    from meshpy.sidecar.probes import probe_server

    source = "--app-probes" if args.app_probes is not None else PROBES_ENV
    return probe_server(text, source, args.probe_listen)


def _control_trust(args: argparse.Namespace) -> ControlPlaneTrust | None:
    """--xds-ca, read and checked now (ValueError says what is wrong)."""
    if not args.xds_ca:
        return None
    from meshpy.identity.control_trust import ControlPlaneTrust

    trust = ControlPlaneTrust(args.xds_ca)
    trust.check()
    return trust


def _ports(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.replace(" ", "").split(",") if p)


def _iptables(args: argparse.Namespace) -> int:
    from meshpy.sidecar import iptables

    try:
        if args.cleanup:
            if not args.dry_run:
                for v6 in (False, True) if args.ipv6 else (False,):
                    iptables.cleanup(v6, args.backend)
            else:
                print("\n".join(" ".join(c) for c in iptables.cleanup_commands(False, args.backend)))
            return 0
        plan = iptables.InterceptPlan(
            proxy_uid=args.proxy_uid, proxy_gid=args.proxy_gid, outbound_port=args.outbound_port,
            inbound_port=args.inbound_port,
            inbound_ports=None if args.inbound_ports.strip() == "*" else _ports(args.inbound_ports),
            exclude_inbound_ports=_ports(args.exclude_inbound_ports),
            exclude_outbound_ports=_ports(args.exclude_outbound_ports),
            exclude_cidrs=tuple(c for c in args.exclude_cidrs.replace(" ", "").split(",") if c),
            ipv6=args.ipv6)
    except ValueError as err:
        print(f"meshpy iptables: {err}", file=sys.stderr)
        return 2
    except iptables.InterceptError as err:
        print(f"meshpy iptables: {err}", file=sys.stderr)
        return 1
    if args.dry_run:
        print(iptables.dry_run(plan), end="")
        return 0
    try:
        iptables.apply(plan, args.backend)
    except iptables.InterceptError as err:
        print(f"meshpy iptables: {err}", file=sys.stderr)
        return 1
    print(f"meshpy iptables: outbound TCP -> :{plan.outbound_port}, inbound TCP -> :{plan.inbound_port} "
          f"(uid {plan.proxy_uid} passes)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "validate":
        if not (args.files or args.envoy_dir or args.meshpy_dir or args.kubernetes):
            print("meshpy validate: config files, --envoy-dir / --meshpy-dir DIR or --kubernetes FILE",
                  file=sys.stderr)
            return 2
        _set_node(args)
        failed = bool(args.files) and _validate(args.files) != 0
        if args.envoy_dir or args.meshpy_dir:
            from control.validate import validate_dir

            for directory in args.envoy_dir:
                failed = not validate_dir(directory, meshpy_format=False) or failed
            for directory in args.meshpy_dir:
                failed = not validate_dir(directory, meshpy_format=True) or failed
        if args.kubernetes:
            from control.validate_kubernetes import validate_kubernetes

            failed = not validate_kubernetes(args.kubernetes, args.cluster_domain) or failed
        return 1 if failed else 0
    if args.command == "reload":
        from meshpy import pidfile

        return pidfile.reload(args.pid_file)
    logging.basicConfig(
        level=getattr(logging, getattr(args, "log_level", "info").upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if args.command == "run":
        return _run(args)
    if args.command == "control":
        from control.server import run_cli

        return run_cli(args)
    if args.command == "ca":
        from control import ca_command

        return ca_command.run(args)
    if args.command == "iptables":
        return _iptables(args)
    if args.command == "inject":
        from meshpy.sidecar import inject_cli

        return inject_cli.run(args)
    if args.command == "wait":
        from meshpy.sidecar import lifecycle_cli

        return lifecycle_cli.run_wait(args)
    if args.command == "drain":
        from meshpy.sidecar import lifecycle_cli

        return lifecycle_cli.run_drain(args)
    if args.command == "demo-upstream":
        from meshpy.demo_upstream import serve_demo

        return _run_loop(args.loop, lambda: serve_demo(args.listen, args.name))
    return 2
