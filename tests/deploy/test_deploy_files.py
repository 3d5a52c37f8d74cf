"""deploy/: Prometheus config, alert rules and Grafana provisioning, checked offline.

promtool (Debian's `prometheus` package) validates the config and the rules, runs the rules'
unit tests and parses every dashboard expression. The metric names below are the contract with
services/metrics.py: a dashboard or alert that names anything else would show nothing.
"""

from __future__ import annotations

import glob
import importlib.util
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from sqlalchemy import create_engine, text

from services.metrics_db import sweep_label
from tests.deploy.dashboards import (DASHBOARDS, DATASOURCES, DEPLOY, RULES, SAMPLE_JOBS, SAMPLE_SWEEP, alert_rules,
                                     dashboards, datasource_types, insert_sample_rows, panels, prometheus_queries,
                                     sql_queries)

PROMETHEUS = DEPLOY / "prometheus"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (apt-get install prometheus)")

COUNTERS = {"descent_jobs_submitted_total", "descent_jobs_finished_total", "descent_training_steps_total",
            "descent_http_requests_total", "descent_scheduler_dispatched_total", "descent_lost_leases_total"}
HISTOGRAMS = {"descent_queue_wait_seconds", "descent_checkpoint_write_seconds", "descent_pack_step_seconds",
              "descent_pack_members", "descent_http_request_duration_seconds", "descent_scheduler_pass_seconds"}
# Read from the database by the API at each scrape (services/metrics_db.py): all absent when it
# cannot read it, when it exports only descent_database_up 0.
DATABASE_GAUGES = {"descent_jobs", "descent_queue_jobs", "descent_queue_oldest_seconds", "descent_workers",
                   "descent_scheduler_last_action_age_seconds", "descent_sweep_best_ssr", "descent_sweep_median_ssr",
                   "descent_sweep_jobs", "descent_sweep_progress_ratio", "descent_sweep_diverged_ratio"}
GAUGES = DATABASE_GAUGES | {"descent_database_up"}
SERIES = COUNTERS | GAUGES | {f"{h}_{s}" for h in HISTOGRAMS for s in ("bucket", "sum", "count")} | {"up"}
REQUIRED_ALERTS = {"DescentSweepStalled", "DescentSweepDiverging", "DescentNoWorkerForQueue",
                   "DescentSchedulerStopped", "DescentSchedulerNeverActed", "DescentDatabaseUnreadable",
                   "DescentApiErrors"}
SCRAPE_JOBS = {"descent-api", "descent-scheduler", "descent-worker", "descent-worker-gpu", "prometheus"}

_PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool", "and", "or",
                 "unless", "inf", "nan"}


def promtool(*args: str | Path) -> str:
    done = subprocess.run([PROMTOOL, *map(str, args)], capture_output=True, text=True, timeout=30)
    output = done.stdout + done.stderr
    assert done.returncode == 0 and "FAILED" not in output, output
    return output


def metric_names(expr: str) -> set[str]:
    """Metric names an expression selects: identifiers outside strings, label matchers, label lists
    and ranges that are neither functions nor keywords."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)
    expr = re.sub(r"\{[^}]*\}|\[[^\]]*\]", "", expr)
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    expr = re.sub(r"\boffset\s+\w+", "", expr)
    return {m.group(1) for m in re.finditer(r"(?<![\w.])([a-zA-Z_:][\w:]*)\b(?!\s*\()", expr)} - _PROMQL_WORDS


# --- Prometheus ---------------------------------------------------------------------------------

def test_scrape_jobs_and_intervals() -> None:
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    assert config["global"]["scrape_interval"] == config["global"]["evaluation_interval"] == "5s"
    assert config["rule_files"] == ["/etc/prometheus/rules/*.yml"]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == SCRAPE_JOBS
    assert jobs["descent-api"]["static_configs"][0]["targets"] == ["api:8000"]
    assert jobs["descent-api"].get("metrics_path", "/metrics") == "/metrics"
    # The API's /metrics takes the metrics key, which compose's prometheus entrypoint writes to
    # this file (tests/deploy/test_compose.py runs that script); no other target gets it.
    assert jobs["descent-api"]["authorization"] == {"type": "Bearer", "credentials_file": "/prometheus/.metrics_key"}
    assert [name for name, job in jobs.items() if "authorization" in job or "bearer_token" in job
            or "bearer_token_file" in job or "basic_auth" in job] == ["descent-api"]
    for job, name in (("descent-scheduler", "scheduler"), ("descent-worker", "worker"), ("descent-worker-gpu", "worker-gpu")):
        assert jobs[job]["dns_sd_configs"] == [{"names": [name], "type": "A", "port": 9100}], job


def test_rules_folder_holds_only_rule_files() -> None:
    """Compose mounts rules/ where the config's glob loads every *.yml as a rule file."""
    for path in RULES.glob("*.yml"):
        assert set(yaml.safe_load(path.read_text())) == {"groups"}, f"{path.name} is not a rule file"


@needs_promtool
def test_prometheus_config_is_valid(tmp_path: Path) -> None:
    """The container paths of the rules and of the metrics key file are swapped for the
    repository's and a temporary file, so promtool finds them here."""
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    config["rule_files"] = [str(RULES / Path(pattern).name) for pattern in config["rule_files"]]
    for job in config["scrape_configs"]:
        if "authorization" in job:
            key_file = tmp_path / f"{job['job_name']}.key"
            key_file.write_text("a-metrics-key-for-promtool")
            job["authorization"]["credentials_file"] = str(key_file)
    assert {Path(p).name for pattern in config["rule_files"] for p in glob.glob(pattern)} == {"descent.yml"}
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    assert "SUCCESS" in promtool("check", "config", tmp_path / "prometheus.yml")


@needs_promtool
def test_alert_rules_are_valid_and_pass_their_unit_tests() -> None:
    assert "SUCCESS" in promtool("check", "rules", *sorted(RULES.glob("*.yml")))
    assert "SUCCESS" in promtool("test", "rules", *sorted((PROMETHEUS / "tests").glob("*.yml")))


def test_required_alerts_are_complete() -> None:
    rules = [rule for _, rule in alert_rules() if "alert" in rule]
    assert REQUIRED_ALERTS <= {rule["alert"] for rule in rules}
    for rule in rules:
        assert rule.get("for") and rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]


def test_alerts_on_absent_database_gauges_need_the_database_readable() -> None:
    """absent(<a gauge read from the database>) is also true when the API cannot read the
    database: such an alert must hold only while it can (DescentDatabaseUnreadable covers the
    other case)."""
    rules = {rule["alert"]: rule for _, rule in alert_rules() if "alert" in rule}
    gated = []
    for name, rule in rules.items():
        absent = re.findall(r"absent(?:_over_time)?\(\s*([a-zA-Z_:][\w:]*)", rule["expr"])
        if set(absent) & DATABASE_GAUGES:
            assert "and on () (max(descent_database_up) == 1)" in " ".join(rule["expr"].split()), name
            gated.append(name)
    assert "DescentSchedulerNeverActed" in gated
    unreadable = rules["DescentDatabaseUnreadable"]
    assert unreadable["expr"].strip() == "max(descent_database_up) == 0" and unreadable["for"] == "1m"
    assert unreadable["labels"]["severity"] == "critical"


# --- Grafana ------------------------------------------------------------------------------------

def test_provisioning() -> None:
    sources = {s["uid"]: s for s in yaml.safe_load(DATASOURCES.read_text())["datasources"]}
    prometheus, postgres = sources["descent-prometheus"], sources["descent-postgres"]
    assert (prometheus["type"], prometheus["url"], prometheus["isDefault"]) == ("prometheus", "http://prometheus:9090", True)
    # Not the owner: the read-only role deploy/postgres/initdb makes (tests/deploy/test_grafana_reader.py).
    assert (postgres["type"], postgres["url"], postgres["user"]) == \
        ("grafana-postgresql-datasource", "postgres:5432", "grafana_reader")
    assert postgres["jsonData"]["database"] == "descent" and postgres["jsonData"]["sslmode"] == "disable"
    assert postgres["secureJsonData"]["password"] == "$GRAFANA_DB_PASSWORD", "the password comes from the environment"
    provider, = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/descent.yml").read_text())["providers"]
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards" and provider["folder"] == "Descent"
    assert provider["allowUiUpdates"] is False


def test_dashboards_are_the_generators_output() -> None:
    spec = importlib.util.spec_from_file_location("generate_dashboards", DEPLOY / "grafana/generate_dashboards.py")
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    built = generator.build()
    assert sorted(built) == sorted(p.name for p in DASHBOARDS.glob("*.json"))
    for name, board in built.items():
        assert (DASHBOARDS / name).read_text(encoding="utf-8") == generator.render(board), \
            f"{name} is stale: run python deploy/grafana/generate_dashboards.py"


def test_dashboards_are_well_formed() -> None:
    uids = datasource_types()
    boards = dashboards()
    assert {b["uid"]: b["title"] for b in boards.values()} == {"descent-sweeps": "Descent sweeps",
                                                              "descent-service": "Descent service"}
    for name, board in boards.items():
        assert board["schemaVersion"] == 39 and board["panels"], name
        ids = [p["id"] for p in panels(board)]
        assert len(ids) == len(set(ids)), f"{name}: duplicate panel ids"
        for panel in panels(board):
            where = f"{name} panel {panel['id']} {panel['title']!r}"
            assert set(panel["gridPos"]) == {"h", "w", "x", "y"} and panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24, where
            if panel["type"] == "row":
                continue
            assert uids.get(panel["datasource"]["uid"]) == panel["datasource"]["type"], where
            assert panel["targets"], where
            refs = [t["refId"] for t in panel["targets"]]
            assert len(refs) == len(set(refs)), where
            for target in panel["targets"]:
                assert uids.get(target["datasource"]["uid"]) == target["datasource"]["type"], where
                assert target.get("expr" if target["datasource"]["type"] == "prometheus" else "rawSql"), where
        for variable in board["templating"]["list"]:
            assert uids.get(variable["datasource"]["uid"]) == variable["datasource"]["type"], variable["name"]


def test_sweeps_dashboard_plots_one_job_against_steps_on_a_log_axis() -> None:
    board = dashboards()["descent-sweeps.json"]
    assert [v["name"] for v in board["templating"]["list"]] == ["sweep", "job"]
    curve, = [p for p in board["panels"] if p["type"] in ("trend", "xychart")]
    target, = curve["targets"]
    assert target["format"] == "table" and target["rawQuery"] and "'$job'" in target["rawSql"]
    assert curve["fieldConfig"]["defaults"]["custom"]["scaleDistribution"]["type"] == "log"


# --- Queries ------------------------------------------------------------------------------------

@needs_promtool
def test_every_prometheus_expression_parses(tmp_path: Path) -> None:
    queries = prometheus_queries()
    rules = [{"record": f"check:expr_{i}", "expr": expr} for i, (_, expr) in enumerate(queries)]
    (tmp_path / "exprs.yml").write_text(yaml.safe_dump({"groups": [{"name": "exprs", "rules": rules}]}))
    promtool("check", "rules", tmp_path / "exprs.yml")


def test_every_prometheus_expression_names_exported_metrics() -> None:
    assert metric_names('sum by (le) (rate(a_bucket{code=~"5.."}[5m])) / on() b offset 10m and absent(c)') == {"a_bucket", "b", "c"}
    queries = prometheus_queries()
    assert len(queries) > 20
    for where, expr in queries:
        names = metric_names(expr)
        assert names and names <= SERIES, f"{where}: {sorted(names - SERIES)} not exported ({expr})"
    used = set().union(*(metric_names(expr) for _, expr in queries))
    assert COUNTERS | GAUGES <= used, f"never shown: {sorted(COUNTERS | GAUGES - used)}"


def test_every_sql_query_runs_on_the_migrated_schema(pg_url: str) -> None:
    """Inside a transaction rolled back at the end: one sweep of two jobs, one with history."""
    sweep, job, other = SAMPLE_SWEEP, *SAMPLE_JOBS
    engine = create_engine(pg_url)
    try:
        with engine.connect() as conn, conn.begin() as transaction:
            insert_sample_rows(conn)
            for where, sql in sql_queries({"sweep": sweep, "job": job}):
                assert conn.execute(text(sql)).all(), f"{where} returned no rows:\n{sql}"
            # The sweep picker names a sweep as the Prometheus `sweep` label does (legends).
            picker, = (sql for where, sql in sql_queries() if where == "descent-sweeps.json variable sweep")
            # (other tests' sweeps may be in the shared database: only the sample's row is ours)
            picked = [row for row in conn.execute(text(picker)).all() if row[1] == sweep]
            assert picked == [(sweep_label("lr-scan", sweep), sweep)]

            def curve(job_id: str) -> list:
                sql, = (sql for _, sql in sql_queries({"sweep": sweep, "job": job_id}) if "history_chunks" in sql)
                return conn.execute(text(sql)).all()

            assert curve(job) == [(1, 3.0), (2, 2.0), (3, 1.0)]
            long = curve(other)  # 10 000 steps in 10 chunks, thinned to every other step
            assert len(long) == 5000 and long[:2] == [(1, 1.0), (3, 3.0)] and long[-1] == (9999, 9999.0)
            transaction.rollback()
    finally:
        engine.dispose()
