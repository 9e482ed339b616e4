"""The container image as `make image` builds it, run with podman: real containers, real sockets.

- what the image is: its size, its user (10001), its entry point, command and health check;
- the CLI inside it: `meshpy control`, `validate` on the image's own config, `inject` naming this tag;
- it serves and drains (host network, a config on free loopback ports in front of a demo upstream on
  this host), with its root filesystem writable or read-only;
- a pod: the init container installs `meshpy iptables` (root, NET_ADMIN), the sidecar runs the image's
  default command and config, the app is another uid; a call from this host to the app's port goes
  through the sidecar's inbound listener and a call the app makes to this host through its outbound one.

Podman runs with Debian's runc (MESHPY_PODMAN_RUNTIME to change it); the image is MESHPY_IMAGE or
meshpy:<version>. Every container and pod is named meshpy-test-<pid>-... and removed at the end.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml
from kit import ROOT, DemoUpstream, free_port, wait_port

import meshpy

IMAGE = os.environ.get("MESHPY_IMAGE", f"meshpy:{meshpy.__version__}")
PODMAN = ["podman", "--runtime", os.environ.get("MESHPY_PODMAN_RUNTIME", "runc")]
PREFIX = f"meshpy-test-{os.getpid()}"
MAX_SIZE = 350_000_000  # bytes; 278 MB measured on the debootstrap base (152 MB of it)
PROXY_UID = 10001
APP_UID = 1000


def podman(*args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([*PODMAN, *args], capture_output=True, text=True, timeout=timeout, check=False)
    if check and done.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)}: exit {done.returncode}\n{done.stdout}{done.stderr}")
    return done


def meshpy_in(*args: str) -> subprocess.CompletedProcess[str]:
    """`meshpy ARGS` in a throwaway container of the image (no network, no scheduled health check)."""
    return podman("run", "--rm", "--network", "none", "--no-healthcheck", IMAGE, *args, check=False)


class Containers:
    """The containers and pods a test starts, removed (by name) when it ends."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self.pods: list[str] = []

    def pod(self, name: str) -> str:
        full = f"{PREFIX}-{name}"
        podman("pod", "create", "--name", full)
        self.pods.append(full)
        return full

    def start(self, name: str, *args: str) -> str:
        """`podman run -d --name <prefix>-name ARGS` (ARGS: run flags, then the image and its arguments)."""
        full = f"{PREFIX}-{name}"
        self.names.append(full)
        podman("run", "-d", "--name", full, *args)
        return full

    def logs(self, name: str) -> str:
        done = podman("logs", name, check=False)
        return done.stdout + done.stderr

    def close(self) -> None:
        if self.names:
            podman("rm", "-f", "-t", "0", *self.names, check=False)
        for pod in self.pods:
            podman("pod", "rm", "-f", "-t", "0", pod, check=False)


@pytest.fixture(scope="session")
def image() -> str:
    if shutil.which("podman") is None:
        pytest.fail("podman is not installed: `make test-image` builds the image (and installs podman) first")
    if podman("image", "exists", IMAGE, check=False).returncode != 0:
        pytest.fail(f"no image {IMAGE}: `make image` builds it (`make test-image` does both)")
    return IMAGE


@pytest.fixture
def containers() -> Iterator[Containers]:
    made = Containers()
    try:
        yield made
    finally:
        made.close()


def status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as err:
        return int(err.code)
    except OSError:
        return 0


def get(host: str, port: int, path: str) -> tuple[int, dict[str, str], bytes]:
    """One request on a keep-alive connection (urllib would ask for `Connection: close` itself)."""
    conn = http.client.HTTPConnection(host, port, timeout=5)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


# --- what the image is ------------------------------------------------------------------------------


def test_the_image_size_user_entrypoint_and_healthcheck(image: str,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    info = json.loads(podman("image", "inspect", image).stdout)[0]
    size = int(podman("image", "inspect", "--format", "{{.Size}}", image).stdout)
    with capsys.disabled():
        print(f"\n{image}: {size} bytes ({size / 1e6:.0f} MB)")
    assert size < MAX_SIZE, f"{image} is {size / 1e6:.0f} MB"
    config = info["Config"]
    assert config["User"] == f"{PROXY_UID}:{PROXY_UID}"
    assert config["Entrypoint"] == ["meshpy"]
    assert config["Cmd"] == ["run", "-c", "/etc/meshpy/meshpy.yaml"]
    assert "15006/tcp" in config["ExposedPorts"]
    assert config["StopSignal"] == "SIGTERM"
    # Docker format: OCI image configs have no HEALTHCHECK, and podman would drop it.
    assert "/ready" in " ".join((info.get("Healthcheck") or {}).get("Test", [])), info.get("Healthcheck")


def test_it_runs_as_uid_10001_not_root(image: str) -> None:
    done = podman("run", "--rm", "--network", "none", "--no-healthcheck", "--entrypoint", "python", image,
                  "-c", "import os, pwd; print(os.getuid(), os.getgid(), pwd.getpwuid(os.getuid()).pw_name)")
    assert done.stdout.split() == [str(PROXY_UID), str(PROXY_UID), "meshpy"]


def test_the_image_has_the_fast_http2_codec(image: str) -> None:
    """libnghttp2 is in the image and loads through the compiled binding the build stage made, so
    meshpy's HTTP/2 is not left on a slower fallback without anyone noticing."""
    done = podman("run", "--rm", "--network", "none", "--no-healthcheck", "--entrypoint", "python", image,
                  "-c", "from meshpy.codec import h2session, nghttp2; print(h2session.resolve('auto'), "
                        "nghttp2.version(), nghttp2.native())")
    assert done.returncode == 0, done.stderr
    name, version, native = done.stdout.split()
    assert name == "nghttp2" and tuple(int(x) for x in version.split(".")[:2]) >= (1, 52)
    assert native == "True", "the compiled binding was not built into the image"


def test_the_cli_in_the_image_control_validate_inject(image: str) -> None:
    version = meshpy_in("--version")
    assert version.returncode == 0 and version.stdout.strip() == f"meshpy {meshpy.__version__}", version

    control = meshpy_in("control", "--help")
    assert control.returncode == 0, control.stderr
    assert "--envoy-dir" in control.stdout and "--kubernetes" in control.stdout

    valid = meshpy_in("validate", "/etc/meshpy/meshpy.yaml")
    assert valid.returncode == 0, valid.stdout + valid.stderr
    assert "/etc/meshpy/meshpy.yaml: ok" in valid.stdout

    # The pods `meshpy inject` writes name the image `make image` tags (unless MESHPY_IMAGE renames it).
    manifest = (ROOT / "config/kubernetes/app.yaml").read_text()
    injected = subprocess.run([*PODMAN, "run", "--rm", "-i", "--network", "none", "--no-healthcheck", image,
                               "inject"], input=manifest, capture_output=True, text=True, timeout=60,
                              check=False)
    assert injected.returncode == 0, injected.stderr
    images = {c["image"] for doc in yaml.safe_load_all(injected.stdout) if doc
              for c in _pod_containers(doc) if c["name"].startswith("meshpy-")}
    assert images == {f"meshpy:{meshpy.__version__}"}, images
    assert image in images or "MESHPY_IMAGE" in os.environ

    rules = meshpy_in("iptables", "--dry-run")
    assert rules.returncode == 0 and f"--uid-owner {PROXY_UID}" in rules.stdout, rules


def _pod_containers(doc: dict[str, object]) -> list[dict[str, str]]:
    spec = doc.get("spec") or {}
    assert isinstance(spec, dict)
    pod = spec.get("template", {}).get("spec", spec) if "template" in spec else spec
    return [*pod.get("initContainers", []), *pod.get("containers", [])]


# --- it serves and drains ---------------------------------------------------------------------------


@pytest.mark.parametrize("rootfs", ["writable", "read-only"])
def test_it_serves_then_drains_on_podman_stop(image: str, containers: Containers, demo: DemoUpstream,
                                               tmp_path: Path, rootfs: str) -> None:
    admin, port = free_port(), free_port()
    config = tmp_path / "meshpy.yaml"
    config.write_text(yaml.safe_dump({
        "admin": f"127.0.0.1:{admin}",
        "drain_time": "3s",
        "grace_time": "5s",
        "listeners": [{"name": "ingress", "address": f"127.0.0.1:{port}", "access_log": "stdout",
                       "cluster": "demo"}],
        "clusters": {"demo": f"127.0.0.1:{demo.port}"},
    }, sort_keys=False))
    config.chmod(0o644)
    # Kubernetes' readOnlyRootFilesystem: not even a /tmp (podman would mount tmpfs on /tmp, /var/tmp, /run).
    flags = ["--read-only", "--read-only-tmpfs=false"] if rootfs == "read-only" else []
    name = containers.start(rootfs, "--network", "host", *flags, "--no-healthcheck",
                            "-v", f"{config}:/etc/meshpy/meshpy.yaml:ro", image)  # the image's own command
    ready = f"http://127.0.0.1:{admin}/ready"
    deadline = time.monotonic() + 30
    while status(ready) != 200:
        state = podman("inspect", "--format", "{{.State.Status}}", name).stdout.strip()
        assert state == "running", f"{name} is {state}:\n{containers.logs(name)}"
        assert time.monotonic() < deadline, f"not ready in 30s:\n{containers.logs(name)}"
        time.sleep(0.1)

    code, headers, body = get("127.0.0.1", port, "/echo")
    assert code == 200, body
    echo = json.loads(body)
    assert echo["upstream"] == "demo" and echo["path"] == "/echo"
    assert "x-request-id" in echo["headers"]  # added by meshpy: the client sent none
    assert headers.get("connection", "keep-alive").lower() != "close"

    # A slow request in flight when the stop comes: the drain waits for it (it may end sooner when idle).
    with ThreadPoolExecutor(1) as pool:
        slow = pool.submit(get, "127.0.0.1", port, "/delay/2500")
        time.sleep(0.3)
        stop = subprocess.Popen([*PODMAN, "stop", "-t", "30", name], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        try:
            deadline = time.monotonic() + 2
            while (ready_code := status(ready)) == 200 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert ready_code == 503, f"/ready: {ready_code} after podman stop\n{containers.logs(name)}"
            # Draining: the listener still answers, asking the client to go.
            code, headers, _ = get("127.0.0.1", port, "/echo")
            assert code == 200 and headers.get("connection", "").lower() == "close", headers
            assert slow.result(timeout=10)[0] == 200  # the request in flight finished
            out, _ = stop.communicate(timeout=60)
        finally:
            if stop.poll() is None:
                stop.kill()
                stop.wait()
            if stop.stdout is not None:
                stop.stdout.close()
    assert stop.returncode == 0, out
    assert podman("inspect", "--format", "{{.State.ExitCode}}", name).stdout.strip() == "0"
    logs = containers.logs(name)
    assert "shutting down: drain 3.0s" in logs and "INFO meshpy: stopped" in logs, logs
    assert '"path":"/echo"' in logs  # the access log, on the container's stdout


# --- a pod: init container, sidecar, app ------------------------------------------------------------


FETCH = """
import sys, urllib.request
try:
    print(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())
except OSError as err:
    print(type(getattr(err, "reason", err)).__name__)
"""


def fetch(container: str, url: str) -> str:
    """The body `container` gets from `url` (`podman exec`, as the container's user), or the error's name."""
    done = podman("exec", container, "python", "-c", FETCH, url, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def metric(sidecar: str, name: str, **labels: str) -> float:
    text = fetch(sidecar, "http://127.0.0.1:15000/stats/prometheus")
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_a_pod_with_init_container_sidecar_and_app(image: str, containers: Containers) -> None:
    pod = containers.pod("pod")
    root_net_admin = ["run", "--rm", "--pod", pod, "--cap-add", "NET_ADMIN", "--user", "0",
                      "--no-healthcheck"]
    # The init container: what `meshpy inject` gives a pod (meshpy-init), with its default arguments.
    init = podman(*root_net_admin, image, "iptables")
    assert f"uid {PROXY_UID} passes" in init.stdout, init.stdout + init.stderr
    nat = podman(*root_net_admin, "--entrypoint", "iptables-save", image, "-t", "nat").stdout
    assert "-A OUTPUT -p tcp -j MESHPY_OUTPUT" in nat and f"--uid-owner {PROXY_UID}" in nat, nat
    assert "-A PREROUTING -p tcp -j MESHPY_INBOUND" in nat, nat

    # The sidecar: the image's own command and config (config/sidecar.yaml), health check included.
    sidecar = containers.start("sidecar", "--pod", pod, image)
    waited = podman("exec", sidecar, "meshpy", "wait", "--timeout", "30", check=False, timeout=60)
    assert waited.returncode == 0, waited.stdout + waited.stderr + containers.logs(sidecar)
    assert podman("healthcheck", "run", sidecar, check=False).returncode == 0  # the image's HEALTHCHECK
    # The app: another uid, so its connections are captured; --init forwards SIGTERM (demo-upstream as
    # PID 1 would ignore it).
    app = containers.start("app", "--pod", pod, "--user", f"{APP_UID}:{APP_UID}", "--init",
                           "--no-healthcheck", image,
                           "demo-upstream", "--listen", "0.0.0.0:8080", "--name", "app")

    infra = podman("pod", "inspect", "--format", "{{.InfraContainerID}}", pod).stdout.strip()
    addresses = "{{.NetworkSettings.IPAddress}} {{.NetworkSettings.Gateway}}"
    pod_ip, gateway = podman("inspect", "--format", addresses, infra).stdout.split()

    # Inbound: this host calls the app's port on the pod's address; the sidecar's inbound listener
    # (15006) takes it and hands it to the port that was dialled.
    deadline = time.monotonic() + 30
    while True:
        with contextlib.suppress(OSError):
            code, _, body = get(pod_ip, 8080, "/echo")
            if code == 200:
                break
        assert time.monotonic() < deadline, containers.logs(app) + containers.logs(sidecar)
        time.sleep(0.2)
    echo = json.loads(body)
    assert echo["upstream"] == "app"
    # Added by the sidecar (use_remote_address: the caller is this host's address on the pod network).
    assert echo["headers"]["x-forwarded-for"] == gateway, echo
    rid = echo["headers"]["x-request-id"]
    access = [json.loads(line) for line in containers.logs(sidecar).splitlines() if line.startswith("{")]
    assert any(a["x_request_id"] == rid and a["path"] == "/echo" and a["upstream_host"] == f"{pod_ip}:8080"
               for a in access), access
    assert metric(sidecar, "meshpy_downstream_rq_total", listener="inbound") >= 1

    # Outbound: the app calls a server on this host; the sidecar's outbound listener (15001) takes the
    # connection and passes it on to where it was going (cluster passthrough, original destination).
    upstream_port = free_port()
    host_demo = subprocess.Popen([sys.executable, "-m", "meshpy", "demo-upstream", "--listen",
                                  f"{gateway}:{upstream_port}", "--name", "host"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT,
                                 env=dict(os.environ, PYTHONPATH=str(ROOT)))
    try:
        wait_port(upstream_port, host=gateway)
        url = f"http://{gateway}:{upstream_port}/echo"
        before = metric(sidecar, "meshpy_downstream_cx_total", listener="outbound")
        passed = metric(sidecar, "meshpy_upstream_cx_total", cluster="passthrough")
        reply = fetch(app, url)
        assert json.loads(reply)["upstream"] == "host", reply
        assert metric(sidecar, "meshpy_downstream_cx_total", listener="outbound") == before + 1
        assert metric(sidecar, "meshpy_upstream_cx_total", cluster="passthrough") == passed + 1
        # The sidecar's own calls (uid 10001) are not captured.
        assert json.loads(fetch(sidecar, url))["upstream"] == "host"
        assert metric(sidecar, "meshpy_downstream_cx_total", listener="outbound") == before + 1

        # Without the sidecar the rules stay and lead nowhere: both ways really went through it.
        stopped = podman("stop", "-t", "30", sidecar, timeout=90)
        assert stopped.returncode == 0
        assert podman("inspect", "--format", "{{.State.ExitCode}}", sidecar).stdout.strip() == "0"
        assert "INFO meshpy: stopped" in containers.logs(sidecar)
        assert fetch(app, url) == "ConnectionRefusedError"
        with pytest.raises(ConnectionRefusedError):
            get(pod_ip, 8080, "/echo")
    finally:
        host_demo.terminate()
        host_demo.wait(10)
