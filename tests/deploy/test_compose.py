"""docker-compose.yml, .env.example and the Dockerfiles, checked without a Docker engine.

- Debian's `docker-compose` 1.29 validates the file (with .env.example, with .env holding only
  the API keys, with the gpu profile), refuses it without the keys, and resolves it exactly as
  :func:`interpolate` (tests/deploy/compose.py) does.
- The structure is checked as data: health checks, dependencies, restart and stop policies,
  scaling, the GPU reservation, deploy/ mounted into Prometheus and Grafana, Prometheus's
  entrypoint writing the metrics key where its config reads it, every variable in .env.example
  and every ``DESCENT_*`` default equal to the code's; the API keys have no default (auth on).
- The migrate, api, scheduler and worker services run as local processes with their own commands
  and environment (.env.example's keys included), only host names and ports swapped for this
  machine's PostgreSQL, Redis and free ports: the API refuses requests without a key, a job
  trains to the StatQuest result, and a sweep's numbers agree between the API and the three
  ``/metrics`` endpoints that Prometheus scrapes (the API's with the metrics key).
"""

from __future__ import annotations

import fnmatch
import importlib.util
import itertools
import os
import re
import stat
import shutil
import signal
import subprocess
import sys
import tomllib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import redis
import yaml
from prometheus_client.parser import text_string_to_metric_families
from pydantic import TypeAdapter
from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_fixed

from services.config import Settings
from services.examples import STATQUEST_B3, statquest_job
from services.keys import KeyRing
from services.metrics_db import sweep_label
from services.spec import FINISHED
from services.stack import wait_until_ready
from tests.conftest import new_pg_database
from tests.deploy.compose import (COMPOSE, COMPOSE_FILE, ENV, ENV_EXAMPLE, METRICS_KEY, RAW, REQUIRED, ROOT,
                                  SERVICES, TENANT_KEYS, MissingVariable, bearer, interpolate, variables_used)
from tests.e2e.conftest import free_port, kill_leftovers

DOCKER_COMPOSE = shutil.which("docker-compose")
REDIS_DB = 11
pytestmark = pytest.mark.slow
needs_docker_compose = pytest.mark.skipif(DOCKER_COMPOSE is None, reason="docker-compose not installed")

_DATABASE_URL = re.compile(r"postgresql\+psycopg://descent:(?P<password>[^@]+)@postgres:5432/descent$")
_BROKER_URL = re.compile(r"redis://:(?P<password>[^@]+)@redis:6379/0$")
KEYS = {"DESCENT_API_KEYS", "DESCENT_METRICS_KEY"}  # required from .env: no default
DESCENT = [name for name, service in SERVICES.items() if service.get("command", [""])[0] == "descent"]
LONG_RUNNING = [name for name in SERVICES if name != "migrate"]


def seconds(duration: str) -> float:
    """A compose duration ("60s", "1m30s") in seconds."""
    units = {"us": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}
    parts = re.findall(r"(\d+(?:\.\d+)?)(us|ms|s|m|h)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, duration
    return sum(float(n) * units[u] for n, u in parts)


def option(argv: list[str], flag: str) -> str | None:
    """The value after ``flag`` in a command, if the flag is there."""
    return argv[argv.index(flag) + 1] if flag in argv else None


def mounts(service: str) -> dict[str, tuple[str, str]]:
    """Container path -> (source, mode) of a service's short-syntax volumes."""
    found = {}
    for entry in SERVICES[service].get("volumes", []):
        source, target, *mode = entry.split(":")
        found[target] = (source, mode[0] if mode else "rw")
    return found


# --- docker-compose itself ------------------------------------------------------------------------


def _compose(*args: str, env_file: Path, cwd: Path) -> subprocess.CompletedProcess:
    """docker-compose with no variable of the file set in its environment (only the env file counts)."""
    env = {k: v for k, v in os.environ.items() if k not in variables_used(RAW)}
    env.pop("COMPOSE_PROFILES", None)
    return subprocess.run([DOCKER_COMPOSE, "--env-file", str(env_file), "-f", str(COMPOSE_FILE), *args],
                          capture_output=True, text=True, env=env, cwd=cwd, timeout=60)


def _env_file(path: Path, pairs: dict[str, str]) -> Path:
    path.write_text("".join(f"{key}={value}\n" for key, value in pairs.items()))
    return path


@needs_docker_compose
@pytest.mark.parametrize("profile", [[], ["--profile", "gpu"]], ids=["default", "gpu"])
@pytest.mark.parametrize("env_file", ["example", "keys-only"])
def test_docker_compose_validates_the_file(profile: list[str], env_file: str, tmp_path: Path) -> None:
    """With .env.example, and with a .env holding only the keys (every other variable falls back
    to its default)."""
    path = ENV_EXAMPLE if env_file == "example" else _env_file(tmp_path / ".env", {k: ENV[k] for k in KEYS})
    done = _compose(*profile, "config", "-q", env_file=path, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "WARNING" not in done.stderr and "is not set" not in done.stderr, done.stderr


@needs_docker_compose
@pytest.mark.parametrize("missing", ["all", *sorted(KEYS)])
@pytest.mark.parametrize("how", ["unset", "empty"])
def test_docker_compose_refuses_to_start_without_the_api_keys(missing: str, how: str, tmp_path: Path) -> None:
    """No key in .env (or an empty one): `docker compose up` stops at once, naming the variable."""
    absent = KEYS if missing == "all" else {missing}
    pairs = {k: ENV[k] for k in KEYS - absent} | ({k: "" for k in absent} if how == "empty" else {})
    done = _compose("config", "-q", env_file=_env_file(tmp_path / ".env", pairs), cwd=tmp_path)
    assert done.returncode != 0, done.stdout
    # compose 1.29: 'Missing mandatory value for "environment" option interpolating {...} in
    # service "migrate": <the message of ${VAR:?message}>', for the first variable it meets.
    said = re.search(r'Missing mandatory value .* in service "[\w-]+": (?P<message>.*)', done.stderr)
    assert said, done.stderr
    assert any(said["message"] == f"set {name} in .env (see .env.example)" for name in absent), done.stderr


def _unescape(value: Any) -> Any:
    """`docker-compose config` writes a literal $ back as $$."""
    if isinstance(value, dict):
        return {key: _unescape(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_unescape(item) for item in value]
    return value.replace("$$", "$") if isinstance(value, str) else value


@needs_docker_compose
def test_docker_compose_resolves_the_file_as_these_tests_do(tmp_path: Path) -> None:
    """The parity test below runs what `interpolate` makes of the file: compose must agree."""
    done = _compose("config", env_file=ENV_EXAMPLE, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    resolved = yaml.safe_load(done.stdout)["services"]
    assert set(resolved) == set(SERVICES)
    for name, service in SERVICES.items():
        ours = {key: service[key] for key in ("command", "entrypoint", "environment", "image") if key in service}
        theirs = {key: _unescape(resolved[name][key]) for key in ours}
        assert theirs == ours, name


def test_no_env_file_means_the_values_of_env_example_except_the_keys() -> None:
    """Every default in the compose file is the value .env.example documents; the API keys have
    none, and without either one the file does not resolve."""
    assert REQUIRED == KEYS
    assert interpolate(RAW, {k: ENV[k] for k in KEYS}) == COMPOSE
    for name in KEYS:
        with pytest.raises(MissingVariable, match=rf"\${{{name}}} is not set.*set {name} in \.env"):
            interpolate(RAW, {k: ENV[k] for k in KEYS - {name}})


def test_env_example_lists_exactly_the_variables_compose_uses() -> None:
    used = variables_used(RAW)
    assert used <= set(ENV), f"missing from .env.example: {sorted(used - set(ENV))}"
    # Compose hands a container only what the file names: anything else in .env does nothing.
    assert set(ENV) <= used, f"in .env.example but unused by docker-compose.yml: {sorted(set(ENV) - used)}"


def test_descent_settings_in_compose_default_to_the_code_defaults() -> None:
    env = SERVICES["api"]["environment"]
    knobs = {key for key in env if key.startswith("DESCENT_")} - {"DESCENT_DATABASE_URL", "DESCENT_BROKER_URL"} - KEYS
    assert knobs, "no DESCENT_* settings passed through"
    for key in knobs:
        field = Settings.model_fields[key.removeprefix("DESCENT_").lower()]
        assert TypeAdapter(field.annotation).validate_python(env[key]) == field.default, key


# Settings compose does not pass to every service, and why: the embedded stack's own (`descent up`),
# or given to each service on its command line (queues, metrics port) or left to the image.
NOT_SHARED = {"home": "embedded stack's folder", "broker_polling_interval": "embedded transport only",
              "worker_queues": "--queues per worker service", "metrics_port": "--metrics-port per service",
              "engine_backend": "set by --queues gpu", "worker_max_tasks_per_child": "optional, unset: none"}


def test_every_setting_can_be_set_from_env() -> None:
    """An operator sets any setting in .env: compose hands containers only what it names."""
    env = SERVICES["api"]["environment"]
    for name in Settings.model_fields:
        var = f"DESCENT_{name.upper()}"
        assert (var in env) != (name in NOT_SHARED), f"{var}: neither passed by compose nor named in NOT_SHARED"


def test_compose_ships_with_auth_on() -> None:
    """Every Descent service gets both keys from .env; .env.example's are valid keys for two
    tenants and a metrics key, and say to change them."""
    for name in KEYS:
        assert re.fullmatch(rf"\$\{{{name}:\?[^}}]*{name}[^}}]*\}}", RAW["x-descent-env"][name]), name
    for name in DESCENT:
        assert {k: SERVICES[name]["environment"][k] for k in KEYS} == {k: ENV[k] for k in KEYS}, name
    ring = KeyRing.parse(ENV["DESCENT_API_KEYS"], ENV["DESCENT_METRICS_KEY"])  # a bad key raises
    assert ring.enabled and ring.metrics is not None
    assert len(TENANT_KEYS) >= 2 and all(ring.tenant_of(key) == tenant for tenant, key in TENANT_KEYS.items())
    assert ring.is_metrics_key(METRICS_KEY)
    for key in [*TENANT_KEYS.values(), METRICS_KEY]:
        assert key.startswith("change-me"), "the example keys must say they are to be changed"
    assert "CHANGE ME" in ENV_EXAMPLE.read_text() and "secrets.token_urlsafe(32)" in ENV_EXAMPLE.read_text()


def test_prometheus_writes_the_metrics_key_where_its_config_reads_it(tmp_path: Path) -> None:
    """The entrypoint's shell script, run here with the key file and the binary swapped for a
    temporary path and a stub: the file holds exactly the key (no newline, owner-only) and
    Prometheus gets the service's command as its arguments."""
    config = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    auth = jobs["descent-api"]["authorization"]
    assert auth.get("type", "Bearer") == "Bearer" and set(auth) <= {"type", "credentials_file"}
    key_file = auth["credentials_file"]
    assert key_file.startswith("/prometheus/")  # the data volume, writable by the image's user
    assert all("authorization" not in job for name, job in jobs.items() if name != "descent-api")
    service = SERVICES["prometheus"]
    assert service["environment"]["DESCENT_METRICS_KEY"] == SERVICES["api"]["environment"]["DESCENT_METRICS_KEY"]
    shell, flag, script, name = service["entrypoint"]
    assert (shell, flag, name) == ("/bin/sh", "-c", "--")  # $0, then the command as "$@"
    assert key_file in script and "exec /bin/prometheus \"$@\"" in script
    stub = tmp_path / "prometheus"
    stub.write_text('#!/bin/sh\nprintf "%s\\n" "$@"\n')
    stub.chmod(0o755)
    local = script.replace(key_file, str(tmp_path / "key")).replace("/bin/prometheus", str(stub))
    done = subprocess.run([shell, flag, local, name, *service["command"]], capture_output=True, text=True, timeout=10,
                          env={"PATH": os.environ["PATH"], "DESCENT_METRICS_KEY": METRICS_KEY})
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == service["command"]
    assert (tmp_path / "key").read_text() == METRICS_KEY
    assert stat.S_IMODE((tmp_path / "key").stat().st_mode) & 0o077 == 0


# --- structure ------------------------------------------------------------------------------------


def test_backing_services_are_healthy_private_and_protected() -> None:
    for name in ("postgres", "redis"):
        assert SERVICES[name]["healthcheck"]["test"], name
        assert "ports" not in SERVICES[name], f"{name} must not be published"
    redis_password = option(SERVICES["redis"]["command"], "--requirepass")
    assert redis_password and SERVICES["redis"]["environment"]["REDIS_PASSWORD"] == redis_password
    for name in DESCENT:
        env = SERVICES[name]["environment"]
        assert _DATABASE_URL.match(env["DESCENT_DATABASE_URL"])["password"] == \
            SERVICES["postgres"]["environment"]["POSTGRES_PASSWORD"], name
        assert _BROKER_URL.match(env["DESCENT_BROKER_URL"])["password"] == redis_password, name


def test_app_services_build_the_project_and_wait_for_their_dependencies() -> None:
    assert set(DESCENT) == {"migrate", "api", "scheduler", "worker", "worker-gpu"}
    assert SERVICES["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in DESCENT:
        build = SERVICES[name]["build"]
        context, dockerfile = (build, "Dockerfile") if isinstance(build, str) else \
            (build["context"], build.get("dockerfile", "Dockerfile"))
        assert context == "." and (ROOT / dockerfile).is_file(), name
        assert SERVICES[name]["environment"] == SERVICES["migrate"]["environment"], f"{name}: not x-descent-env"
        if name != "migrate":
            deps = SERVICES[name]["depends_on"]
            assert deps["migrate"]["condition"] == "service_completed_successfully", name
            assert deps["redis"]["condition"] == "service_healthy", name
    assert SERVICES["worker-gpu"]["build"]["dockerfile"] == "Dockerfile.gpu"


def test_long_running_services_restart_and_stop_gracefully() -> None:
    assert SERVICES["migrate"]["restart"] == "no"
    for name in LONG_RUNNING:
        assert SERVICES[name]["restart"] == "unless-stopped", name
    for name in ("worker", "worker-gpu"):  # a training chunk must reach its checkpoint
        assert seconds(SERVICES[name]["stop_grace_period"]) >= 30, name
    for name in ("api", "scheduler"):
        assert seconds(SERVICES[name]["stop_grace_period"]) >= 10, name


def test_workers_scale_and_serve_metrics_on_the_compose_network() -> None:
    """`--scale worker=4` needs no fixed container name or host port."""
    for name, queue, concurrency in (("worker", "cpu", None), ("worker-gpu", "gpu", "1")):
        service = SERVICES[name]
        assert "container_name" not in service and "ports" not in service, name
        argv = service["command"]
        assert argv[:2] == ["descent", "worker"] and option(argv, "--queues") == queue, name
        assert option(argv, "--metrics-port") == "9100", name
        if concurrency:
            assert option(argv, "--concurrency") == concurrency, name
    assert option(SERVICES["scheduler"]["command"], "--metrics-port") == "9100"
    api = SERVICES["api"]["command"]
    assert api[:2] == ["descent", "api"] and option(api, "--port") == "8000"


def test_gpu_worker_reserves_an_nvidia_gpu_in_the_gpu_profile() -> None:
    service = SERVICES["worker-gpu"]
    assert service["profiles"] == ["gpu"]
    assert all("profiles" not in SERVICES[name] for name in SERVICES if name != "worker-gpu")
    [device] = service["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert device.get("count") == "all" or int(device["count"]) >= 1
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(req.startswith("cupy-cuda12x") for req in extras["gpu"])
    dockerfile = (ROOT / "Dockerfile.gpu").read_text()
    assert re.search(r"^(ARG CUDA_IMAGE=nvidia/cuda:12\.|FROM nvidia/cuda:12\.)", dockerfile, re.M)
    assert "extra['gpu']" in dockerfile, "Dockerfile.gpu must install the gpu extra (CuPy)"


@pytest.mark.skipif(importlib.util.find_spec("cupy") is not None, reason="CuPy is installed here")
def test_the_gpu_worker_service_exits_in_one_line_on_a_host_without_cupy(tmp_path: Path) -> None:
    """Its own command and environment, run here (no CuPy): it exits at once naming the cause,
    and compose's restart policy shows it restarting, instead of running as a live gpu worker
    that fails every gpu job with "No module named 'cupy'"."""
    ports = {"api": free_port(), "worker-gpu": free_port()}
    env = _local_env("worker-gpu", f"sqlite:///{tmp_path / 'descent.db'}", "filesystem://", tmp_path / "home")
    try:
        done = subprocess.run(_local_argv("worker-gpu", ports), env=env, capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        pytest.fail("the worker-gpu service started on a host without CuPy")
    finally:
        kill_leftovers(tmp_path / "home")
    assert done.returncode == 1 and SERVICES["worker-gpu"]["restart"] == "unless-stopped"
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("error: --queues gpu trains on CuPy") and "No module named 'cupy'" in line


def test_prometheus_scrapes_every_metrics_port_that_compose_serves() -> None:
    config = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    scraped = set()
    for job in config["scrape_configs"]:
        for static in job.get("static_configs", []):
            for target in static["targets"]:
                host, port = target.rsplit(":", 1)
                if host != "localhost":
                    assert option(SERVICES[host]["command"], "--port") == port, target
                    scraped.add(host)
        for dns in job.get("dns_sd_configs", []):
            for host in dns["names"]:
                assert option(SERVICES[host]["command"], "--metrics-port") == str(dns["port"]), host
                scraped.add(host)
    serving = {name for name in DESCENT if "--metrics-port" in SERVICES[name]["command"]} | {"api"}
    assert scraped == serving


def test_prometheus_service_mounts_the_repository_config() -> None:
    service = SERVICES["prometheus"]
    assert service["image"].startswith("prom/prometheus:v")
    found = mounts("prometheus")
    assert found["/etc/prometheus/prometheus.yml"] == ("./deploy/prometheus/prometheus.yml", "ro")
    assert found["/etc/prometheus/rules"] == ("./deploy/prometheus/rules", "ro")
    assert found["/prometheus"][0] in COMPOSE["volumes"]  # the TSDB outlives the container
    assert "--config.file=/etc/prometheus/prometheus.yml" in service["command"]
    assert "--storage.tsdb.path=/prometheus" in service["command"]
    assert [port.rsplit(":", 2)[-2:] for port in service["ports"]] == [["9090", "9090"]]
    assert service["healthcheck"]["test"]


def test_grafana_service_is_provisioned_from_the_repository() -> None:
    service, env = SERVICES["grafana"], SERVICES["grafana"]["environment"]
    assert re.fullmatch(r"grafana/grafana:11\.\d+\.\d+", service["image"])
    assert [port.rsplit(":", 2)[-2:] for port in service["ports"]] == [["3000", "3000"]]
    found = mounts("grafana")
    assert found["/etc/grafana/provisioning"] == ("./deploy/grafana/provisioning", "ro")
    assert found["/var/lib/grafana/dashboards"] == ("./deploy/grafana/dashboards", "ro")
    raw_env = RAW["services"]["grafana"]["environment"]
    assert raw_env["GF_SECURITY_ADMIN_PASSWORD"].startswith("${GRAFANA_ADMIN_PASSWORD")
    # Anonymous viewers only when .env asks for them; a viewer's role when it does.
    assert raw_env["GF_AUTH_ANONYMOUS_ENABLED"] == "${GRAFANA_ANONYMOUS_ENABLED:-false}"
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "false" and env["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    switched = interpolate(RAW, ENV | {"GRAFANA_ANONYMOUS_ENABLED": "true"})["services"]["grafana"]["environment"]
    assert switched["GF_AUTH_ANONYMOUS_ENABLED"] == "true"
    # The PostgreSQL datasource logs in as the read-only role, with its password: Grafana never
    # gets the owner's.
    assert "POSTGRES_PASSWORD" not in env and "POSTGRES_USER" not in env
    assert env["GRAFANA_DB_PASSWORD"] == SERVICES["postgres"]["environment"]["GRAFANA_DB_PASSWORD"]
    # Grafana expands $VAR in provisioning files from its own environment.
    for path in (ROOT / "deploy" / "grafana" / "provisioning").rglob("*.y*ml"):
        for name in variables_used(yaml.safe_load(path.read_text())):
            assert name in env, f"{path.relative_to(ROOT)} reads ${name}, which grafana's environment lacks"
    home = env["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home.startswith("/var/lib/grafana/dashboards/")
    assert (ROOT / "deploy" / "grafana" / "dashboards" / home.rsplit("/", 1)[1]).is_file()
    for dependency in ("prometheus", "postgres"):
        assert service["depends_on"][dependency]["condition"] == "service_healthy"
        assert SERVICES[dependency]["healthcheck"]["test"]


def test_postgres_makes_the_read_only_role_grafana_logs_in_as() -> None:
    """deploy/postgres/initdb runs at the database's creation (tests/deploy/test_grafana_reader.py
    runs it); the role and password it is given are the datasource's."""
    assert mounts("postgres")["/docker-entrypoint-initdb.d"] == ("./deploy/postgres/initdb", "ro")
    scripts = sorted((ROOT / "deploy" / "postgres" / "initdb").iterdir())
    assert [p.name for p in scripts] == ["10-grafana-reader.sh"]
    assert all(os.access(p, os.X_OK) for p in scripts), "the image sources a script it cannot execute"
    env = SERVICES["postgres"]["environment"]
    datasource, = (s for s in yaml.safe_load((ROOT / "deploy/grafana/provisioning/datasources/descent.yml")
                                            .read_text())["datasources"] if s["uid"] == "descent-postgres")
    assert datasource["user"] == env["GRAFANA_DB_USER"] != env["POSTGRES_USER"]
    assert datasource["secureJsonData"]["password"] == "$GRAFANA_DB_PASSWORD"
    assert env["GRAFANA_DB_PASSWORD"] == SERVICES["grafana"]["environment"]["GRAFANA_DB_PASSWORD"]
    assert env["GRAFANA_DB_PASSWORD"] != env["POSTGRES_PASSWORD"]


def test_bind_mounts_exist_and_named_volumes_are_declared() -> None:
    for name in SERVICES:
        for source, mode in mounts(name).values():
            if source.startswith("."):
                assert (ROOT / source).exists(), f"{name} mounts missing {source}"
                assert mode == "ro", f"{name} may write into the repository at {source}"
            else:
                assert source in COMPOSE["volumes"], f"{name}: volume {source} is not declared"


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "Dockerfile.gpu"])
def test_dockerfile_copies_what_the_package_needs(dockerfile: str) -> None:
    copied = set()
    for line in (ROOT / dockerfile).read_text().splitlines():
        if line.startswith("COPY ") and "--from" not in line:
            for source in line.split()[1:-1]:
                assert (ROOT / source).exists(), f"{dockerfile} copies missing {source}"
                copied.add(source.removeprefix("./"))
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = {pattern.rstrip("*") for pattern in project["tool"]["setuptools"]["packages"]["find"]["include"]}
    assert packages | {"pyproject.toml", project["project"]["readme"]} <= copied
    ignored = [line for line in (ROOT / ".dockerignore").read_text().splitlines() if line and not line.startswith("#")]
    for source in copied:
        assert not any(fnmatch.fnmatch(source, pattern) for pattern in ignored), f".dockerignore drops {source}"


# --- the services' own commands, run here -------------------------------------------------------


@dataclass
class LocalCompose:
    api: str
    metrics: dict[str, str]  # service -> the /metrics URL Prometheus would scrape


@pytest.fixture
def fresh_database() -> Iterator[str]:
    """An empty PostgreSQL database: the migrate service makes its schema."""
    with new_pg_database("descent_compose") as url:
        yield url


@pytest.fixture
def redis_url() -> str:
    client = redis.Redis(host="127.0.0.1", port=6379, db=REDIS_DB)
    try:
        client.flushdb()
    except redis.ConnectionError as exc:
        pytest.skip(f"Redis not reachable at 127.0.0.1:6379: {exc}")
    finally:
        client.close()
    return f"redis://127.0.0.1:6379/{REDIS_DB}"


def _local_argv(service: str, ports: dict[str, int]) -> list[str]:
    """The service's own command: this venv's `descent`, local interface, free ports."""
    argv = list(SERVICES[service]["command"])
    assert argv[0] == "descent"
    swap = {"--host": "127.0.0.1", "--port": str(ports["api"]), "--metrics-port": str(ports.get(service))}
    local = [swap.get(flag, arg) for flag, arg in itertools.pairwise(["", *argv])]
    return [str(Path(sys.executable).with_name("descent")), *local[1:]]


def _local_env(service: str, database_url: str, broker_url: str, home: Path) -> dict[str, str]:
    """The service's own environment, its PostgreSQL and Redis swapped for this machine's."""
    env = dict(SERVICES[service]["environment"])
    assert _DATABASE_URL.match(env["DESCENT_DATABASE_URL"]) and _BROKER_URL.match(env["DESCENT_BROKER_URL"])
    env |= {"DESCENT_DATABASE_URL": database_url, "DESCENT_BROKER_URL": broker_url, "DESCENT_HOME": str(home)}
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(("DESCENT_", "PROMETHEUS_"))}
    return inherited | env  # a container starts with its own metrics folder: none is inherited


@pytest.fixture
def compose_up(fresh_database: str, redis_url: str, tmp_path: Path) -> Iterator[LocalCompose]:
    home = tmp_path / "home"  # in every process's environment: the marker kill_leftovers looks for
    ports = {name: free_port() for name in ("api", "scheduler", "worker")}
    procs = []
    try:
        subprocess.run(_local_argv("migrate", ports), env=_local_env("migrate", fresh_database, redis_url, home),
                       check=True, timeout=120)
        for name in ("api", "scheduler", "worker"):
            with (tmp_path / f"{name}.log").open("wb") as log:
                procs.append(subprocess.Popen(
                    _local_argv(name, ports), env=_local_env(name, fresh_database, redis_url, home),
                    stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True))
        url = f"http://127.0.0.1:{ports['api']}"
        wait_until_ready(url, 60, lambda: _alive(procs, tmp_path))
        yield LocalCompose(url, {name: f"http://127.0.0.1:{ports[name]}/metrics" for name in ("scheduler", "worker")}
                           | {"api": f"{url}/metrics"})
    finally:
        _stop(procs)
        kill_leftovers(home)


def _alive(procs: list[subprocess.Popen], logs: Path) -> None:
    for proc in procs:
        if proc.poll() is not None:
            pytest.fail(f"{proc.args[1]} exited with {proc.returncode}:\n"
                        + "\n".join(path.read_text()[-2000:] for path in logs.glob("*.log")))


def _stop(procs: list[subprocess.Popen]) -> None:
    """SIGTERM to each process group (as `docker compose stop`), SIGKILL after 15 s."""
    for proc in procs:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    for proc in procs:
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # pool children that outlived their parent too
        except ProcessLookupError:
            pass
        proc.wait()


T = TypeVar("T")


def eventually(check: Callable[[], T], timeout: float) -> T:
    """``check()``'s result once it stops failing an assertion; its last failure after ``timeout``."""
    for attempt in Retrying(stop=stop_after_delay(timeout), wait=wait_fixed(0.2), reraise=True,
                            retry=retry_if_exception_type((AssertionError, httpx.HTTPError))):
        with attempt:
            return check()
    raise AssertionError("unreachable")


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(url: str, key: str | None = None) -> Samples:
    answer = httpx.get(url, headers=bearer(key) if key else None, timeout=5)
    answer.raise_for_status()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(answer.text) for s in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    key = (name, frozenset(labels.items()))
    assert key in samples, f"no sample {name}{labels}"
    return samples[key]


def test_compose_services_need_keys_and_train_the_statquest_job(compose_up: LocalCompose) -> None:
    """With .env.example's keys: a request without a key is refused (the health checks are open),
    /metrics takes only the metrics key, and a tenant's job is its own."""
    api, key, other = compose_up.api, *list(TENANT_KEYS.values())[:2]
    for path in ("/healthz", "/readyz"):
        assert httpx.get(f"{api}{path}", timeout=5).status_code == 200, path
    assert httpx.get(f"{api}/v1/jobs", timeout=5).status_code == 401
    assert httpx.post(f"{api}/v1/jobs", json=statquest_job(), timeout=5).status_code == 401
    assert httpx.get(f"{api}/v1/jobs", headers=bearer("not-a-key-of-this-stack"), timeout=5).status_code == 401
    assert httpx.get(f"{api}/v1/jobs", headers=bearer(METRICS_KEY), timeout=5).status_code == 401
    assert httpx.get(compose_up.metrics["api"], timeout=5).status_code == 401
    assert httpx.get(compose_up.metrics["api"], headers=bearer(key), timeout=5).status_code == 403
    assert httpx.get(compose_up.metrics["api"], headers=bearer(METRICS_KEY), timeout=5).status_code == 200
    for name in ("scheduler", "worker"):  # on the compose network only: no key, as before
        assert httpx.get(compose_up.metrics[name], timeout=5).status_code == 200, name

    created = httpx.post(f"{api}/v1/jobs", json=statquest_job(), headers=bearer(key), timeout=10)
    assert created.status_code == 201, created.text
    job_id = created.json()["id"]

    def finished() -> dict:
        job = httpx.get(f"{api}/v1/jobs/{job_id}", headers=bearer(key), timeout=5).json()
        assert job["status"] not in ("queued", "running"), job
        return job

    assert eventually(finished, 60)["status"] == "succeeded"
    layers = httpx.get(f"{api}/v1/jobs/{job_id}/parameters", headers=bearer(key), timeout=5).json()["layers"]
    assert round(layers[1]["bias"][0], 2) == STATQUEST_B3
    assert layers[1]["weight"] == [[-1.22, -2.30]]
    assert httpx.get(f"{api}/v1/jobs/{job_id}", headers=bearer(other), timeout=5).status_code == 404
    assert httpx.get(f"{api}/v1/jobs", headers=bearer(other), timeout=5).json()["items"] == []


def test_a_sweep_agrees_with_the_metrics_of_api_scheduler_and_worker(compose_up: LocalCompose) -> None:
    """What Prometheus would scrape from each service equals what the API reports (the API's
    /metrics read with the metrics key, as Prometheus does)."""
    api, headers = compose_up.api, bearer(next(iter(TENANT_KEYS.values())))
    body = {"name": "compose-parity", "base": statquest_job() | {"stop": {"max_steps": 40, "min_step_size": 0.001},
                                                                 "checkpoint_every": 10},
            "grid": {"learning_rate": [0.01, 0.05, 0.1], "init.seed": [1, 2]}}
    created = httpx.post(f"{api}/v1/sweeps", json=body, headers=headers, timeout=10)
    assert created.status_code == 201, created.text
    sweep_id = created.json()["id"]

    def finished() -> dict:
        sweep = httpx.get(f"{api}/v1/sweeps/{sweep_id}", headers=headers, timeout=5).json()
        assert sweep["status"] == "finished", sweep
        return sweep

    sweep = eventually(finished, 60)
    members = httpx.get(f"{api}/v1/jobs", params={"sweep_id": sweep_id, "limit": 500}, headers=headers,
                        timeout=5).json()["items"]
    assert len(members) == sweep["members"] == 6 and all(m["status"] in FINISHED for m in members)
    every_job = httpx.get(f"{api}/v1/jobs", params={"limit": 500}, headers=headers, timeout=5).json()["items"]
    assert len(every_job) == 6  # a fresh database: the gauges count only the sweep
    steps, statuses = sum(m["step"] for m in members), Counter(m["status"] for m in members)
    assert steps > 0

    def worker_counted_everything() -> Samples:  # the pool child counts right after its commit
        samples = scrape(compose_up.metrics["worker"])
        assert value(samples, "descent_training_steps_total", queue="cpu") == steps
        return samples

    worker = eventually(worker_counted_everything, 10)
    for status in FINISHED:
        assert value(worker, "descent_jobs_finished_total", status=status) == statuses.get(status, 0), status
    scheduler = scrape(compose_up.metrics["scheduler"])
    assert value(scheduler, "descent_scheduler_dispatched_total", queue="cpu") >= len(members)
    assert value(scheduler, "descent_scheduler_dispatched_total", queue="gpu") == 0

    served = scrape(compose_up.metrics["api"], METRICS_KEY)
    assert value(served, "descent_jobs_submitted_total") == len(members)
    label = sweep_label(sweep["name"], sweep_id)
    for status in ("queued", "running", *FINISHED):
        assert value(served, "descent_jobs", status=status) == statuses.get(status, 0), status
        assert value(served, "descent_sweep_jobs", sweep=label, status=status) == sweep["counts"].get(status, 0), status
    assert value(served, "descent_sweep_progress_ratio", sweep=label) == 1.0  # finished: all it will do
    assert value(served, "descent_database_up") == 1
