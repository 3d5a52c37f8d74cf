"""Every query the monitoring in deploy/ runs, for tests that check or run them.

- ``prometheus_queries()``: (where, PromQL) for each Prometheus target of the dashboards and
  each alert rule's expression.
- ``sql_queries(variables)``: (where, SQL) for each PostgreSQL target and template variable
  query, with the dashboard variables (``$sweep``, ``${job}``, ``${job:text}``, ``[[job]]``)
  replaced as Grafana does for a single-valued variable: the raw value, unquoted (the SQL quotes).

``where`` names the file and the panel, variable or alert, for assertion messages.

- ``insert_sample_rows(conn)``: rows on which every SQL query returns some.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from pathlib import Path

import yaml
from sqlalchemy import Connection, text

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
DASHBOARDS = DEPLOY / "grafana" / "dashboards"
RULES = DEPLOY / "prometheus" / "rules"
DATASOURCES = DEPLOY / "grafana" / "provisioning" / "datasources" / "descent.yml"

# Values that match nothing but keep every query valid SQL (ids are 36-character uuids).
PLACEHOLDERS = {"sweep": "00000000-0000-0000-0000-000000000000", "job": "00000000-0000-0000-0000-000000000000"}
_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\[\[(\w+)\]\]|\$(\w+)")


def dashboards() -> dict[str, dict]:
    """File name -> parsed dashboard JSON, for every file in deploy/grafana/dashboards/."""
    return {path.name: json.loads(path.read_text(encoding="utf-8")) for path in sorted(DASHBOARDS.glob("*.json"))}


def alert_rules() -> list[tuple[str, dict]]:
    """(file name, rule) for every rule of every group in deploy/prometheus/rules/*.yml."""
    return [(path.name, rule) for path in sorted(RULES.glob("*.yml"))
            for group in yaml.safe_load(path.read_text(encoding="utf-8"))["groups"] for rule in group["rules"]]


def datasource_types() -> dict[str, str]:
    """uid -> type of every provisioned Grafana datasource."""
    provisioned = yaml.safe_load(DATASOURCES.read_text(encoding="utf-8"))["datasources"]
    return {source["uid"]: source["type"] for source in provisioned}


def panels(board: dict) -> list[dict]:
    """Every panel, those inside collapsed rows included."""
    return [p for top in board["panels"] for p in [top, *top.get("panels", [])]]


def _targets(source_type: str) -> list[tuple[str, dict]]:
    found = []
    for name, board in dashboards().items():
        for panel in panels(board):
            for target in panel.get("targets", []):
                datasource = target.get("datasource") or panel.get("datasource") or {}
                if datasource.get("type") == source_type:
                    where = f"{name} panel {panel['id']} {panel['title']!r} target {target.get('refId')}"
                    found.append((where, target))
    return found


def prometheus_queries() -> list[tuple[str, str]]:
    queries = [(where, target["expr"]) for where, target in _targets("prometheus")]
    queries += [(f"rules/{file} alert {rule['alert']}", rule["expr"].strip()) for file, rule in alert_rules() if "alert" in rule]
    return queries


def substitute(sql: str, variables: Mapping[str, str] | Callable[[str], str]) -> str:
    """Grafana's replacement of dashboard variables in a query; built-in macros are refused."""
    if "$__" in sql:
        raise ValueError(f"Grafana macro in {sql!r}: teach substitute() to expand it")
    value_of = variables if callable(variables) else variables.__getitem__

    def replace(match: re.Match) -> str:
        value = value_of(next(group for group in match.groups() if group))
        if "'" in value:
            raise ValueError(f"quote in variable value {value!r}")
        return value

    return _VARIABLE.sub(replace, sql)


SAMPLE_SWEEP = "5" * 8 + "-0000-0000-0000-000000000000"
SAMPLE_JOBS = ("a" * 36, "b" * 36)


def insert_sample_rows(conn: Connection) -> None:
    """One sweep (SAMPLE_SWEEP, 'lr-scan') of two running jobs (SAMPLE_JOBS): the first at step 3
    with an SSR and a history of 3 steps, the second at step 10 000 with 10 chunks of history;
    enough for every SQL panel and variable to return rows."""
    sweep, (job, other) = SAMPLE_SWEEP, SAMPLE_JOBS
    conn.execute(text("INSERT INTO datasets (id, content_hash, n_points, n_in, n_out, dtype, x, y, created_at) "
                      "VALUES ('d', 'h', 1, 1, 1, 'float64', '', '', now())"))
    conn.execute(text("INSERT INTO sweeps (id, name, spec, paths, members, planned_steps, cancelled, created_at) "
                      "VALUES (:id, 'lr-scan', '{}', '[]', 2, 200, false, now())"), {"id": sweep})
    for job_id, step, ssr, values in ((job, 3, 0.5, '{"lr": 0.1}'), (other, 10_000, None, None)):
        conn.execute(text(
            "INSERT INTO jobs (id, name, sweep_id, spec, dataset_id, device, status, step, ssr, attempts, "
            "cancel_requested, created_at, sweep_values) VALUES (:id, 'm', :sweep, '{}', 'd', 'cpu', "
            "'running', :step, :ssr, 0, false, now(), CAST(:values AS json))"),
            {"id": job_id, "sweep": sweep, "step": step, "ssr": ssr, "values": values})
    conn.execute(text("INSERT INTO history_chunks (job_id, first_step, ssr) VALUES (:id, 1, '{3, 2, 1}')"),
                 {"id": job})
    conn.execute(text("INSERT INTO history_chunks SELECT :id, 1 + 1000 * c, array_agg(s::float8 ORDER BY s) "
                      "FROM generate_series(1, 10000) s, LATERAL (SELECT (s - 1) / 1000 AS c) chunk GROUP BY c"),
                 {"id": other})


def sql_queries(variables: Mapping[str, str] | Callable[[str], str] = PLACEHOLDERS) -> list[tuple[str, str]]:
    found = [(where, target["rawSql"]) for where, target in _targets("grafana-postgresql-datasource")]
    for name, board in dashboards().items():
        for variable in board.get("templating", {}).get("list", []):
            if variable.get("type") == "query" and variable["datasource"]["type"] == "grafana-postgresql-datasource":
                query = variable["query"]
                found.append((f"{name} variable {variable['name']}", query if isinstance(query, str) else query["rawSql"]))
    return [(where, substitute(sql, variables)) for where, sql in found]
