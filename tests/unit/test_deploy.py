"""The deployment files agree with each other and with the server's settings.

deploy/Dockerfile, .dockerignore, deploy/compose.yaml (with deploy/nginx.conf) and
deploy/kubernetes/ are parsed here and checked field by field: probes on the server's real
routes, one port everywhere, a grace period that covers the drain, resource requests that
cover the measured memory, only real `WHISPER_SERVICE_*` settings in the environment. The
Dockerfile's commands themselves run in tests/e2e/test_container.py (with this parser).
"""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from whisper_service.config import ENV_PREFIX, Settings
from whisper_service.server import health
from whisper_service.server.auth import PUBLIC_PATHS
from whisper_service.server.run import SHUTDOWN_GRACE_S

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"

# docs/benchmarks.md (2 cores, 2 decode workers), the figures the requests are sized on:
BASE_IDLE_MB = 371  # Memory: server RSS idle, base
STREAM_PEAK_MB = 11  # Memory: per extra client (peak), base at 16 clients
UPLOAD_PEAK_MB = 206  # upload table and "120 s chunks at +179-206 MB": one file job's peak
MARGIN_S = 5  # a grace period's slack past preStop, drain and shutdown, at the least


# --- Dockerfile ---------------------------------------------------------------------------

@dataclass
class Instruction:
    keyword: str  # upper case
    args: str  # continuation lines joined as Docker joins them (backslash-newline removed)


@dataclass
class Stage:
    image: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [i.args for i in self.instructions if i.keyword == keyword]

    def one(self, keyword: str) -> str:
        found = self.all(keyword)
        assert len(found) == 1, f"expected one {keyword} in stage {self.name or self.image}"
        return found[0]

    def env(self) -> dict[str, str]:
        """ENV key=value pairs, in order (later ones win); values unexpanded."""
        return {k: v for args in self.all("ENV") for k, v in env_pairs(args).items()}


def env_pairs(args: str) -> dict[str, str]:
    """One ENV instruction's key=value pairs."""
    pairs = {}
    for pair in shlex.split(args):
        key, sep, value = pair.partition("=")
        assert sep, f"ENV {args!r}: use the key=value form"
        pairs[key] = value
    return pairs


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions as Docker reads them: comment lines dropped (also inside a continuation),
    lines ending in a backslash joined with the next."""
    instructions: list[Instruction] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.rstrip()
        if line.lstrip().startswith("#") or not line.strip():
            continue
        if line.endswith("\\"):
            pending += line[:-1]
            continue
        keyword, _, args = (pending + line).strip().partition(" ")
        instructions.append(Instruction(keyword.upper(), args.strip()))
        pending = ""
    assert not pending, "the Dockerfile ends inside a continuation"
    return instructions


def stages(text: str) -> list[Stage]:
    """Build stages, FROM images with ARG defaults substituted."""
    args: dict[str, str] = {}
    result: list[Stage] = []
    for ins in parse_dockerfile(text):
        if ins.keyword == "ARG" and not result:
            name, _, default = ins.args.partition("=")
            args[name] = default
        elif ins.keyword == "FROM":
            words = ins.args.split()
            image = re.sub(r"\$\{?(\w+)\}?", lambda m: args[m.group(1)], words[0])
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            result.append(Stage(image, name))
        else:
            assert result, f"{ins.keyword} before the first FROM"
            result[-1].instructions.append(ins)
    return result


def healthcheck(args: str) -> tuple[dict[str, str], list[str]]:
    """HEALTHCHECK's --options and its exec-form CMD."""
    options, _, command = args.partition("CMD")
    opts = dict(o.removeprefix("--").split("=", 1) for o in options.split())
    return opts, json.loads(command)


def dockerfile_stages() -> list[Stage]:
    return stages((DEPLOY / "Dockerfile").read_text())


# --- .dockerignore --------------------------------------------------------------------------

def dockerignore_patterns(text: str) -> list[tuple[bool, re.Pattern[str]]]:
    """(is_exception, regex) per line, Docker's syntax: `*` and `?` within a path segment,
    `**` across segments, `!` lets a path back in; the last match decides."""
    patterns = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line.removeprefix("!").strip().strip("/")
        regex = ""
        i = 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                regex, i = regex + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                regex, i = regex + ".*", i + 2
            elif pattern[i] == "*":
                regex, i = regex + "[^/]*", i + 1
            elif pattern[i] == "?":
                regex, i = regex + "[^/]", i + 1
            elif pattern[i] == "[":
                end = pattern.index("]", i)
                regex, i = regex + pattern[i:end + 1], end + 1
            else:
                regex, i = regex + re.escape(pattern[i]), i + 1
        patterns.append((negate, re.compile(regex + r"\Z")))
    return patterns


def dockerignore_excluded(path: str, patterns: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Whether a context path (relative, `/`-separated) stays out of the build context: a
    pattern matches the path or any directory above it."""
    parts = path.split("/")
    prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    excluded = False
    for negate, regex in patterns:
        if any(regex.match(p) for p in prefixes):
            excluded = not negate
    return excluded


def context_patterns() -> list[tuple[bool, re.Pattern[str]]]:
    return dockerignore_patterns((ROOT / ".dockerignore").read_text())


# --- helpers ----------------------------------------------------------------------------------

def quantity(value: str | int | float) -> float:
    """A Kubernetes quantity (cpu "2" / "500m", memory "1Gi" / "512M") as a number of cores
    or bytes."""
    units = {"m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "Ki": 1 << 10, "Mi": 1 << 20,
             "Gi": 1 << 30}
    match = re.fullmatch(r"([0-9.]+)([a-zA-Z]*)", str(value))
    assert match, f"not a quantity: {value!r}"
    return float(match.group(1)) * (units[match.group(2)] if match.group(2) else 1)


def duration_s(value: str) -> float:
    """A compose duration such as "30s" or "1m30s"."""
    parts = re.findall(r"([0-9.]+)(ms|h|m|s)", value)
    assert parts and "".join(n + u for n, u in parts) == value, f"not a duration: {value!r}"
    return sum(float(n) * {"h": 3600, "m": 60, "s": 1, "ms": 1e-3}[u] for n, u in parts)


def check_env_names(names, where: str) -> None:
    """Every WHISPER_SERVICE_* name must be a setting: a misspelt one is silently ignored."""
    fields = {f"{ENV_PREFIX}{name.upper()}" for name in Settings.model_fields}
    unknown = sorted(n for n in names if n.startswith(ENV_PREFIX) and n not in fields)
    assert not unknown, f"{where}: not Settings fields: {unknown}"


def drain_timeout_s(env: dict[str, str]) -> float:
    name = f"{ENV_PREFIX}DRAIN_TIMEOUT_S"
    return float(env.get(name, Settings.model_fields["drain_timeout_s"].default))


def k8s_docs() -> dict[str, dict]:
    docs = {}
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                docs[doc["kind"]] = doc
    return docs


def deployment_container() -> tuple[dict, dict]:
    deployment = k8s_docs()["Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    return pod, container


def container_env(container: dict) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in container.get("env", [])}


def compose() -> dict:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


# --- the parsers themselves ------------------------------------------------------------------

def test_parser_joins_continuations_and_drops_comments() -> None:
    text = "FROM a AS b\n# note\nRUN one \\\n  # inside\n  && two\nCMD [\"x\"]\n"
    assert parse_dockerfile(text) == [Instruction("FROM", "a AS b"),
                                      Instruction("RUN", "one   && two"),
                                      Instruction("CMD", '["x"]')]


def test_dockerignore_matcher_follows_docker_semantics() -> None:
    patterns = dockerignore_patterns("*\n!src/\n**/__pycache__\n")
    assert dockerignore_excluded("tests/unit/x.py", patterns)
    assert not dockerignore_excluded("src/pkg/mod.py", patterns)
    assert dockerignore_excluded("src/pkg/__pycache__/mod.pyc", patterns)
    assert dockerignore_excluded(".venv", patterns)


# --- Dockerfile -------------------------------------------------------------------------------

def test_dockerfile_is_multi_stage_on_slim_python_311() -> None:
    builder, *_, final = dockerfile_stages()
    assert builder.name, "the builder stage needs a name for COPY --from"
    assert re.fullmatch(r"python:3\.11-slim(-\w+)?", final.image), final.image
    # The venv's interpreter is a link into the base image: same image in both stages.
    assert builder.image == final.image
    copies = final.all("COPY")
    assert all(c.startswith(f"--from={builder.name} ") for c in copies), copies
    assert not final.all("RUN") or all("pip" not in r for r in final.all("RUN")), \
        "nothing is installed in the runtime stage"


def test_dockerfile_prepares_models_at_build_time_in_the_runtime_cache_dir() -> None:
    builder, *_, final = dockerfile_stages()
    runs = builder.all("RUN")
    assert any(re.search(r"\bwhisper-service models --prepare\b", r) for r in runs), runs
    cache = final.env()[f"{ENV_PREFIX}CACHE_DIR"]
    assert builder.env()[f"{ENV_PREFIX}CACHE_DIR"] == cache
    assert f"--from={builder.name} {cache} {cache}" in final.all("COPY")
    # the last prepare follows every other builder step: what it proves holds for the image
    assert re.search(r"whisper-service models --prepare$", runs[-1]), runs[-1]


def test_dockerfile_runtime_is_non_root_with_healthcheck_port_and_env_only_config() -> None:
    *_, final = dockerfile_stages()
    user = final.one("USER").split(":")[0]
    assert user not in ("root", "0") and user.isdigit() and int(user) >= 1000, \
        f"USER {user}: numeric and non-root, so Kubernetes' runAsNonRoot can verify it"

    port = Settings.model_fields["port"].default
    assert final.one("EXPOSE") == str(port)
    env = final.env()
    assert env[f"{ENV_PREFIX}HOST"] == "0.0.0.0"
    assert env[f"{ENV_PREFIX}PORT"] == str(port)
    check_env_names(env, "Dockerfile")
    others = {k for k in env if not k.startswith(ENV_PREFIX)}
    assert others <= {"PATH", "PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE",
                      "ORT_DISABLE_TELEMETRY"}, others
    assert env.get("ORT_DISABLE_TELEMETRY") == "1", "onnxruntime phones home without it"

    options, command = healthcheck(final.one("HEALTHCHECK"))
    assert command[0] == "python" and "/health" in " ".join(command)
    assert {"interval", "timeout", "start-period"} <= options.keys()

    # CMD starts the console script with no flags: the environment configures everything.
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert json.loads(final.one("CMD")) == [next(iter(scripts)), "serve"]
    assert final.all("STOPSIGNAL") in ([], ["SIGTERM"])


def test_health_paths_are_real_routes_and_liveness_needs_no_key() -> None:
    paths = {route.path for route in health.router.routes}
    assert {"/health", "/ready"} <= paths
    assert "/health" in PUBLIC_PATHS


# --- .dockerignore ---------------------------------------------------------------------------

@pytest.mark.parametrize("path", [
    ".venv/bin/python", ".venv", "tests/unit/test_deploy.py", "tests/data/en_short.wav",
    ".git/HEAD", ".pytest_cache/v/cache/nodeids", ".hypothesis/examples/x", ".ruff_cache/x",
    "src/whisper_service/__pycache__/cli.cpython-311.pyc", "bench/capacity.py",
    "tests/e2e/artifacts/x.png", "dist/whisper_service-0.1.0.whl", "deploy/compose.yaml",
])
def test_dockerignore_keeps_out(path: str) -> None:
    assert dockerignore_excluded(path, context_patterns())


def test_dockerignore_lets_in_what_the_dockerfile_copies() -> None:
    builder = dockerfile_stages()[0]
    sources = [shlex.split(c)[:-1] for c in builder.all("COPY")]
    assert sources, "the builder copies from the context"
    patterns = context_patterns()
    for path in (p for srcs in sources for p in srcs):
        files = [path] if (ROOT / path).is_file() else \
            [str(f.relative_to(ROOT)) for f in (ROOT / path).rglob("*") if f.is_file()
             and "__pycache__" not in f.parts]
        assert files, path
        for f in files:
            assert not dockerignore_excluded(f, patterns), f"{f} is copied but ignored"


# --- Kubernetes ------------------------------------------------------------------------------

def test_kubernetes_probes_port_and_service_agree_with_the_server() -> None:
    docs = k8s_docs()
    deployment, service = docs["Deployment"], docs["Service"]
    pod, container = deployment_container()
    port = Settings.model_fields["port"].default
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert list(ports.values()) == [port]

    def probe(kind: str) -> tuple[str, int]:
        get = container[kind]["httpGet"]
        return get["path"], ports.get(get["port"], get["port"])

    assert probe("livenessProbe") == ("/health", port)
    assert probe("readinessProbe") == ("/ready", port)
    assert probe("startupProbe") == ("/health", port)

    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert service["spec"]["selector"].items() <= labels.items()
    (svc_port,) = service["spec"]["ports"]
    assert ports.get(svc_port["targetPort"], svc_port["targetPort"]) == port

    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == ["deployment.yaml", "service.yaml"]


def test_kubernetes_runs_the_images_user_and_only_real_settings() -> None:
    pod, container = deployment_container()
    *_, final = dockerfile_stages()
    uid = int(final.one("USER").split(":")[0])
    security = pod["securityContext"]
    assert security["runAsNonRoot"] is True and security["runAsUser"] == uid
    env = container_env(container)
    check_env_names(env, "deployment.yaml")
    # An httpGet probe cannot send a key from a Secret: with keys set, a probe on a keyed
    # path would never pass. Both probe paths must be public whatever the env holds.
    assert {"/health", "/ready"} <= set(PUBLIC_PATHS), "the probes carry no key"


def test_kubernetes_grace_period_covers_prestop_drain_and_shutdown() -> None:
    pod, container = deployment_container()
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep", command
    pre_stop = float(command[1])
    assert pre_stop >= 3, "endpoints need a few seconds to drop the pod everywhere"
    drain = drain_timeout_s(container_env(container))
    grace = pod["terminationGracePeriodSeconds"]
    assert grace >= pre_stop + drain + SHUTDOWN_GRACE_S + MARGIN_S, \
        (grace, pre_stop, drain, SHUTDOWN_GRACE_S)


def test_kubernetes_requests_cover_measured_memory_and_cores() -> None:
    _, container = deployment_container()
    requests, limits = container["resources"]["requests"], container["resources"]["limits"]
    cores = quantity(requests["cpu"])
    # Decode workers default to the node's cores, not the pod's: pinned to the request.
    assert int(container_env(container)[f"{ENV_PREFIX}NUM_WORKERS"]) == cores

    settings = Settings()
    worst_mb = (BASE_IDLE_MB + settings.max_sessions * STREAM_PEAK_MB
                + settings.max_file_jobs * UPLOAD_PEAK_MB)
    assert settings.default_model == "base", "the figures above are base's"
    memory = quantity(requests["memory"])
    assert memory >= worst_mb * 1e6, f"request {memory / 1e6:.0f} MB < worst {worst_mb} MB"
    assert quantity(limits["memory"]) >= memory


# --- compose and nginx -----------------------------------------------------------------------

def test_compose_runs_two_replicas_behind_nginx() -> None:
    spec = compose()
    services = spec["services"]
    replicas = sorted(name for name in services if name != "nginx")
    assert replicas == ["replica-1", "replica-2"]
    port = Settings.model_fields["port"].default
    for name in replicas:
        replica = services[name]
        assert replica["build"] == {"context": "..", "dockerfile": "deploy/Dockerfile"}
        assert (DEPLOY / replica["build"]["context"] / replica["build"]["dockerfile"]).is_file()
        assert "ports" not in replica, "only nginx is published"
        assert [str(p) for p in replica["expose"]] == [str(port)]
        env = replica["environment"]
        check_env_names(env, f"compose {name}")
        assert float(env[f"{ENV_PREFIX}NUM_WORKERS"]) == float(replica["cpus"])
        assert duration_s(replica["stop_grace_period"]) >= \
            drain_timeout_s(env) + SHUTDOWN_GRACE_S + MARGIN_S

    nginx = services["nginx"]
    assert "./nginx.conf:/etc/nginx/conf.d/default.conf:ro" in nginx["volumes"]
    assert (DEPLOY / "nginx.conf").is_file()
    published = [str(p) for p in nginx["ports"]]
    assert published == ["8080:8080"]
    for name in replicas:
        assert nginx["depends_on"][name]["condition"] == "service_healthy"

    conf = (DEPLOY / "nginx.conf").read_text()
    upstream = re.search(r"upstream\s+whisper\s*\{(.*?)\}", conf, re.S).group(1)
    servers = re.findall(r"^\s*server\s+([\w.-]+):(\d+)", upstream, re.M)
    assert sorted(servers) == [(name, str(port)) for name in replicas]
    assert re.search(r"^\s*listen\s+8080\s*;", conf, re.M)
