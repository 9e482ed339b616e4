"""The Dockerfile, checked without a container engine: its shape (stages, a pinned base, a non-root user),
and the command its ENTRYPOINT and CMD run, with its HEALTHCHECK, run here against the same config file."""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import yaml
from kit import free_port

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Instruction:
    word: str
    args: str
    stage: int  # index of the FROM it belongs to


def instructions() -> list[Instruction]:
    """Continuation lines joined, comments dropped, ARG defaults substituted into FROM lines."""
    out: list[Instruction] = []
    args: dict[str, str] = {}
    stage = -1
    pending = ""
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        word, _, rest = (pending + stripped).partition(" ")
        pending = ""
        word, rest = word.upper(), rest.strip()
        if word == "ARG" and stage == -1 and "=" in rest:
            name, _, default = rest.partition("=")
            args[name] = default
        if word == "FROM":
            stage += 1
            rest = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args[m.group(1) or m.group(2)], rest)
        out.append(Instruction(word, rest, stage))
    return out


def final_stage() -> list[Instruction]:
    every = instructions()
    last = max(i.stage for i in every)
    return [i for i in every if i.stage == last]


def exec_form(word: str) -> list[str]:
    found = [i.args for i in final_stage() if i.word == word]
    assert found, f"no {word} in the final stage"
    value = json.loads(found[-1])  # the exec (JSON) form: no shell in between to eat signals
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), found[-1]
    return value


def test_two_stages_and_the_runtime_takes_only_the_build_output() -> None:
    froms = [i.args.split() for i in instructions() if i.word == "FROM"]
    assert len(froms) >= 2, froms
    build_stage = froms[0][froms[0].index("AS") + 1] if "AS" in froms[0] else "0"
    copies = [i.args for i in final_stage() if i.word == "COPY"]
    assert any(c.startswith(f"--from={build_stage} ") for c in copies), copies
    assert not any(c.split()[0] in (".", "./") for c in copies), "the runtime stage copies the source tree"


def test_the_runtime_stage_installs_runtime_dependencies_only() -> None:
    runs = " ".join(i.args for i in final_stage() if i.word == "RUN")
    for unwanted in ("[test", "[dev", "[bench", "build-essential", "gcc", "pytest"):
        assert unwanted not in runs, f"the runtime stage installs {unwanted}"
    # The injected init container runs `meshpy iptables` from this image: iptables-restore must be there.
    assert re.search(r"apt-get install [^&]*\biptables\b", runs), "iptables is not installed"


def test_the_build_stage_compiles_the_nghttp2_binding_and_the_runtime_has_the_library() -> None:
    build = " ".join(i.args for i in instructions() if i.word == "RUN" and i not in final_stage())
    assert "libnghttp2-dev" in build and "meshpy.codec.nghttp2.native_build" in build
    assert build.index("native_build") < build.index("pip wheel"), "the wheel is made before the binding"
    runs = " ".join(i.args for i in final_stage() if i.word == "RUN")
    assert re.search(r"apt-get install [^&]*\blibnghttp2-14\b", runs), "libnghttp2 is not in the runtime"


def test_the_base_image_is_a_slim_python_pinned_to_an_exact_version() -> None:
    for from_args in (i.args.split() for i in instructions() if i.word == "FROM"):
        image = from_args[0]
        assert re.fullmatch(r"python:\d+\.\d+\.\d+-slim(-[a-z]+)?(@sha256:[0-9a-f]{64})?", image), image


def test_the_image_runs_as_a_non_root_user() -> None:
    users = [i.args for i in final_stage() if i.word == "USER"]
    assert users, "no USER: the image would run as root"
    user, _, group = users[-1].partition(":")
    assert user not in ("0", "root") and group not in ("0", "root"), users[-1]
    # Numeric, so that Kubernetes' runAsNonRoot can check it without reading /etc/passwd.
    assert user.isdigit(), users[-1]


def test_the_entrypoint_is_meshpy_with_a_healthcheck_on_ready() -> None:
    assert exec_form("ENTRYPOINT") == ["meshpy"]
    health = [i.args for i in final_stage() if i.word == "HEALTHCHECK"]
    assert health and "/ready" in health[-1]


def _container_command() -> tuple[list[str], Path]:
    """ENTRYPOINT + CMD, and the file in this repository the config path inside the image comes from."""
    command = exec_form("ENTRYPOINT") + exec_form("CMD")
    in_image = command[command.index("-c") + 1]
    copies = [i.args.split() for i in final_stage() if i.word == "COPY" and "--from" not in i.args]
    sources = [c[-2] for c in copies if c[-1] == in_image]
    assert sources, f"nothing is copied to {in_image}"
    return command, ROOT / sources[-1]


def _healthcheck(admin: str) -> list[str]:
    """The HEALTHCHECK command, with this interpreter for `python` and the test's admin address."""
    args = [i.args for i in final_stage() if i.word == "HEALTHCHECK"][-1]
    _, _, cmd = args.partition(" CMD ")
    argv = json.loads(cmd) if cmd.strip().startswith("[") else ["sh", "-c", cmd]
    argv = [sys.executable if a in ("python", "python3") else a for a in argv]
    return [a.replace("127.0.0.1:15000", admin) for a in argv]


def _ready_status(admin: str) -> int:
    try:
        with urllib.request.urlopen(f"http://{admin}/ready", timeout=2) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as err:
        return int(err.code)
    except OSError:
        return 0


def _meshpy() -> list[str]:
    script = Path(sys.executable).parent / "meshpy"
    return [str(script)] if script.exists() else [sys.executable, "-m", "meshpy"]


def test_the_healthcheck_fails_with_no_proxy() -> None:
    proc = subprocess.run(_healthcheck(f"127.0.0.1:{free_port()}"), capture_output=True, timeout=30)
    assert proc.returncode != 0


def test_the_container_command_serves_is_healthy_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    command, source = _container_command()
    # The image's config with its ports moved to free ones, so that the test runs beside anything.
    config = yaml.safe_load(source.read_text())
    admin = f"127.0.0.1:{free_port()}"
    assert str(config["admin"]) == "127.0.0.1:15000", "the HEALTHCHECK asks 127.0.0.1:15000"
    config["admin"] = admin
    for listener in config["listeners"]:
        host = str(listener["address"]).rsplit(":", 1)[0]
        listener["address"] = f"{host}:{free_port()}"
    path = tmp_path / "meshpy.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    argv = _meshpy() + [str(path) if a == command[command.index("-c") + 1] else a for a in command[1:]]
    log = (tmp_path / "meshpy.log").open("wb")
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)

    def output() -> str:
        return f"{shlex.join(argv)}:\n" + (tmp_path / "meshpy.log").read_text(errors="replace")

    try:
        deadline = time.monotonic() + 20
        while _ready_status(admin) != 200:
            assert proc.poll() is None, output()
            assert time.monotonic() < deadline, "not ready in 20s\n" + output()
            time.sleep(0.1)
        health = subprocess.run(_healthcheck(admin), capture_output=True, text=True, timeout=30)
        assert health.returncode == 0, health.stderr + output()

        proc.send_signal(signal.SIGTERM)
        # Draining: /ready turns 503 (the config's drain_time keeps the admin up for 2s), and the
        # healthcheck says so.
        deadline = time.monotonic() + 2
        while _ready_status(admin) == 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        if proc.poll() is None:
            health = subprocess.run(_healthcheck(admin), capture_output=True, text=True, timeout=30)
            assert health.returncode != 0, "the healthcheck passes while draining"
        assert proc.wait(timeout=30) == 0, output()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
    assert "stopped" in output()


def test_the_stop_signal_is_the_one_that_drains() -> None:
    signals = [i.args for i in final_stage() if i.word == "STOPSIGNAL"]
    assert signals in ([], ["SIGTERM"]), signals


def _in_context(path: str) -> bool:
    """Whether .dockerignore lets `path` into the build context (the last pattern that matches wins)."""
    included = True
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        pattern = line.lstrip("!").rstrip("/")
        if fnmatch.fnmatch(path, pattern) or fnmatch.fnmatch(path, pattern.removeprefix("**/")):
            included = negated
    return included


def test_every_file_the_build_copies_is_in_the_context() -> None:
    # .dockerignore is an allowlist: a source COPY names and it leaves out stops the build (it once
    # left out control/, so `meshpy control` could not be in the image).
    sources = []
    for i in instructions():
        if i.word == "COPY" and "--from=" not in i.args:
            sources.extend(i.args.split()[:-1])
    assert sources and "control" in sources
    left_out = [s for s in sources if not _in_context(s.rstrip("/"))]
    assert left_out == [], f".dockerignore leaves out {left_out}"
    assert not _in_context("tests") and not _in_context("meshpy/__pycache__")


def test_the_readme_builds_the_tag_meshpy_inject_uses() -> None:
    import meshpy

    built = re.findall(r"docker build -t (\S+)", (ROOT / "README.md").read_text())
    assert built == [f"meshpy:{meshpy.__version__}"]  # inject's default image (inject_cli --image)


def test_make_image_builds_the_tag_meshpy_inject_uses() -> None:
    import meshpy

    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^image:.*\n\tbash tests/image/build\.sh$", makefile, re.MULTILINE), "make image"
    env = {k: v for k, v in os.environ.items() if k != "MESHPY_IMAGE"}
    done = subprocess.run(["bash", str(ROOT / "tests/image/build.sh"), "--print-tag"], capture_output=True,
                          text=True, timeout=30, env=env, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"meshpy:{meshpy.__version__}"  # inject_cli --image's default
