"""Test kit: real processes and real sockets, no mocks.

- `Proxy`: meshpy as a subprocess (`python -m meshpy run`), on a chosen event loop, with helpers for
  its admin port, its RSS and signals.
- `DemoUpstream`: the project's demo upstream as a subprocess.
- `RawUpstream`: a scripted TCP server in a thread, for upstreams that misbehave on purpose.
- `http()`: one request over a fresh or given socket, parsed with httptools; `raw()` for bytes.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httptools
import pytest

# One port picker for the tests and the benchmarks: it never hands out the same port twice.
from benchmarks.tools import free_port as free_port

ROOT = Path(__file__).resolve().parent.parent
LOOPS = ("uvloop", "asyncio")


def h2_codec() -> str:
    """The HTTP/2 codec the proxies of this run use: `make test` runs the HTTP/2 and gRPC modules once
    with the default (nghttp2) and once with MESHPY_HTTP2_CODEC=h2 (the proxies inherit it)."""
    from meshpy.codec import h2session

    return h2session.resolve(os.environ.get(h2session.ENV) or "auto")


def wait_port(port: int, timeout: float = 10.0, host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.2):
            return
        time.sleep(0.02)
    raise TimeoutError(f"nothing listens on {host}:{port}")


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


@dataclass
class Proxy:
    """A meshpy process. `config` is YAML text; `admin_port` must match the config's admin address."""

    config: str
    admin_port: int
    loop: str = "uvloop"
    extra_args: list[str] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None
    path: Path | None = None
    log_path: Path | None = None

    def start(self, wait_ready: bool = True) -> Proxy:
        fd, name = tempfile.mkstemp(suffix=".yaml", prefix="meshpy-test-")
        os.write(fd, self.config.encode())
        os.close(fd)
        self.path = Path(name)
        self.log_path = Path(name + ".log")
        log = open(self.log_path, "wb")  # noqa: SIM115 - the process owns it
        config_args = ["-c", str(self.path)] if self.config else []  # "": the command line says it all
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "meshpy", "run", *config_args, "--loop", self.loop, *self.extra_args],
            stdout=log, stderr=subprocess.STDOUT, env=_env(), cwd=ROOT)
        log.close()
        if wait_ready:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"meshpy exited with {self.proc.returncode}:\n{self.logs()}")
            with contextlib.suppress(OSError):
                if self.admin("/ready")[0] == 200:
                    return
            time.sleep(0.05)
        raise TimeoutError(f"meshpy not ready:\n{self.logs()}")

    def admin(self, path: str, method: str = "GET") -> tuple[int, str]:
        req = urllib.request.Request(f"http://127.0.0.1:{self.admin_port}{path}", method=method)
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode()

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples of `name` whose labels include `labels`."""
        from prometheus_client.parser import text_string_to_metric_families

        total = 0.0
        for fam in text_string_to_metric_families(self.admin("/stats/prometheus")[1]):
            for s in fam.samples:
                if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                    total += s.value
        return total

    def config_dump(self) -> dict[str, object]:
        return dict(json.loads(self.admin("/config_dump")[1]))

    def rss_kb(self) -> int:
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS")

    def hwm_kb(self) -> int:
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
        raise RuntimeError("no VmHWM")

    def rewrite(self, config: str) -> None:
        """Replace the config file in place (the proxy notices the change)."""
        assert self.path is not None
        tmp = self.path.with_suffix(".new")
        tmp.write_text(config)
        os.replace(tmp, self.path)
        self.config = config

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path and self.log_path.exists() else ""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 20.0) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        rc = self.proc.returncode
        if self.path is not None:
            self.path.unlink(missing_ok=True)
        return rc


@dataclass
class DemoUpstream:
    port: int
    name: str = "demo"
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> DemoUpstream:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "meshpy", "demo-upstream", "--listen", f"127.0.0.1:{self.port}",
             "--name", self.name], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env())
        wait_port(self.port)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


Handler = Callable[[socket.socket], None]


class RawUpstream:
    """A TCP server in a thread. `handler(conn)` runs for each connection (in its own thread)."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.port = int(self.sock.getsockname()[1])
        self.connections = 0
        self.received: list[bytes] = []
        self._stop = False
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> RawUpstream:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop = True
        with contextlib.suppress(OSError):
            self.sock.close()

    def _serve(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._run, args=(conn,), daemon=True).start()

    def _run(self, conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            self.handler(conn)


def read_request_head(conn: socket.socket) -> bytes:
    """Read up to the end of one request head (for RawUpstream handlers)."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = conn.recv(65536)
        if not chunk:
            break
        buf += chunk
    return buf


@dataclass
class Response:
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    keep_alive: bool = True
    version: str = "1.1"

    def header(self, name: str) -> str | None:
        for n, v in self.headers:
            if n == name.lower():
                return v
        return None

    def all(self, name: str) -> list[str]:
        return [v for n, v in self.headers if n == name.lower()]


class _Reader:
    """A response parser that lives as long as its socket, so that bytes of the next (pipelined)
    response read together with this one are kept for the next call."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.done: list[Response] = []
        self.head_request = False
        self._reset()

    def _reset(self) -> None:
        self.headers: list[tuple[str, str]] = []
        self.body = bytearray()
        self.got_head = False

    def on_message_begin(self) -> None:
        self._reset()

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.decode("latin-1").lower(), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        if self.parser.get_status_code() < 200:
            return
        self.got_head = True
        if self.head_request:
            self._finish()
            self.parser = httptools.HttpResponseParser(self)

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        if self.parser.get_status_code() >= 200 and self.got_head:
            self._finish()

    def _finish(self) -> None:
        p = self.parser
        self.done.append(Response(p.get_status_code(), self.headers, bytes(self.body), p.should_keep_alive(),
                                  p.get_http_version()))
        self.got_head = False


_readers: weakref.WeakKeyDictionary[socket.socket, _Reader] = weakref.WeakKeyDictionary()


def read_response(sock: socket.socket, head_request: bool = False, timeout: float = 10.0) -> Response:
    sock.settimeout(timeout)
    reader = _readers.get(sock)
    if reader is None:
        reader = _readers[sock] = _Reader()
    reader.head_request = head_request
    while not reader.done:
        data = sock.recv(262144)
        if not data:
            if reader.got_head:
                reader._finish()  # close-delimited body
                break
            raise ConnectionError("connection closed before a full response")
        reader.parser.feed_data(data)
    return reader.done.pop(0)


def request_bytes(method: str = "GET", path: str = "/", host: str = "example.com",
                  headers: list[tuple[str, str]] | None = None, body: bytes | None = None,
                  version: str = "1.1") -> bytes:
    lines = [f"{method} {path} HTTP/{version}", f"Host: {host}"]
    for n, v in headers or []:
        lines.append(f"{n}: {v}")
    framed = any(n.lower() in ("content-length", "transfer-encoding") for n, _ in headers or [])
    if body is not None and not framed:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b"")


def http(port: int, method: str = "GET", path: str = "/", host: str = "example.com",
         headers: list[tuple[str, str]] | None = None, body: bytes | None = None,
         sock: socket.socket | None = None, version: str = "1.1") -> Response:
    """One request; over `sock` when given (keep-alive tests), else over a fresh connection."""
    own = sock is None
    s = sock or socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        s.sendall(request_bytes(method, path, host, headers, body, version))
        return read_response(s, head_request=method == "HEAD")
    finally:
        if own:
            s.close()


def raw(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    """Send bytes, read until the proxy closes (or the timeout), return everything read."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        out = b""
        with contextlib.suppress(TimeoutError, ConnectionResetError):
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                out += chunk
        return out


def refuses(port: int, host: str = "127.0.0.1") -> bool:
    """Whether nothing listens on the port any more (a connect is refused)."""
    try:
        with socket.create_connection((host, port), timeout=1):
            return False
    except ConnectionRefusedError:
        return True


def is_closed(sock: socket.socket, timeout: float = 2.0) -> bool:
    sock.settimeout(timeout)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


# -- Envoy ---------------------------------------------------------------------------------------------
def envoy_binary() -> str | None:
    beside = Path(sys.executable).parent / "envoy"
    if beside.exists():
        return str(beside)
    return shutil.which("envoy")


@dataclass
class Envoy:
    """Real Envoy on `config`, one worker, logging to a file."""

    config: str
    admin_port: int
    proc: subprocess.Popen[bytes] | None = None
    files: list[Path] = field(default_factory=list)
    extra_args: list[str] = field(default_factory=list)  # e.g. --file-flush-interval-msec for its logs

    def start(self) -> Envoy:
        envoy = envoy_binary()
        assert envoy is not None
        fd, name = tempfile.mkstemp(suffix=".yaml", prefix="envoy-diff-")
        os.write(fd, self.config.encode())
        os.close(fd)
        cfg, log = Path(name), Path(name + ".log")
        self.files = [cfg, log]
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                [envoy, "-c", str(cfg), "--concurrency", "1", "--disable-hot-restart",
                 "--base-id", str(os.getpid() % 60000 + 1000), "--log-level", "warning", *self.extra_args],
                stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"envoy exited with {self.proc.returncode}:\n{self.logs()}")
            with contextlib.suppress(OSError), urllib.request.urlopen(
                    f"http://127.0.0.1:{self.admin_port}/ready", timeout=1) as resp:
                if resp.status == 200:
                    return self
            time.sleep(0.05)
        raise TimeoutError(f"envoy not ready:\n{self.logs()}")

    def logs(self) -> str:
        return self.files[1].read_text(errors="replace") if self.files else ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for f in self.files:
            f.unlink(missing_ok=True)


def envoy_http_bootstrap(admin: int, port: int, upstream: int, *, route: str = "",
                         vhost: str = "", cluster: str = "", hcm: str = "", filters: str = "",
                         routes: str = "") -> str:
    """An Envoy bootstrap with one HTTP listener on `port` whose one route sends everything to the
    cluster `backend` (one endpoint, `upstream`). `route` adds RouteAction fields, `vhost` virtual host
    fields, `cluster` Cluster fields, each as YAML lines (a flow mapping's entries for `route`); `hcm`
    HttpConnectionManager fields, one per line; `filters` http_filters entries before the router (YAML
    list items at column 0); `routes` routes before the catch-all one (flow mappings, each ending ", ")."""
    extra = f", {route}" if route else ""
    hcm = "\n          ".join(hcm.strip().splitlines())
    filters = "".join(f"\n          {line}" for line in filters.strip("\n").splitlines())
    return f"""
admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: {admin} }} }}
static_resources:
  listeners:
  - name: web
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.\
HttpConnectionManager"
          stat_prefix: web
          {hcm}
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              {vhost}
              routes: [{routes}{{ match: {{ prefix: / }}, route: {{ cluster: backend{extra} }} }}]
          http_filters:{filters}
          - name: envoy.filters.http.router
            typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }}
  clusters:
  - name: backend
    connect_timeout: 1s
    {cluster}
    load_assignment:
      cluster_name: backend
      endpoints:
      - lb_endpoints:
        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {upstream} }} }} }}
"""


def fleet_config(admin: int, port: int, upstreams: list[int], *, route: str = "", cluster: str = "",
                 listener: str = "") -> str:
    """meshpy YAML: one listener on `port` with one route to the cluster `backend` over `upstreams`;
    `route`, `cluster` and `listener` add YAML lines there (no drain on stop: tests stop it often)."""
    endpoints = ", ".join(f"127.0.0.1:{p}" for p in upstreams)
    route = route.replace("\n", "\n        ")
    return f"""
admin: 127.0.0.1:{admin}
drain_time: 0s
listeners:
  - name: web
    address: 127.0.0.1:{port}
    {listener}
    routes:
      - match: /
        cluster: backend
        {route}
clusters:
  - name: backend
    endpoints: [{endpoints}]
    {cluster}
"""


def eventually(check: Callable[[], object], what: str, timeout: float = 10.0) -> None:
    """Wait until `check()` is true, or fail saying `what` did not happen."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"not within {timeout}s: {what}")


# For the tests that drive curl: `make test` installs it as root, and says it is missing otherwise.
needs_curl = pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed (Debian: curl)")
