"""Writes deploy/grafana/dashboards/*.json: `python deploy/grafana/generate_dashboards.py`.

Standard library only. The JSON files are what Grafana loads (and what is committed); this script
is how they are edited: change a panel here, run it, commit both. tests/deploy checks they agree.

Datasource uids are the ones deploy/grafana/provisioning/datasources/descent.yml provisions.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parent / "dashboards"
PROM = {"type": "prometheus", "uid": "descent-prometheus"}
PG = {"type": "grafana-postgresql-datasource", "uid": "descent-postgres"}
QUANTILES = ((0.5, "p50"), (0.95, "p95"))


def prom(expr: str, legend: str = "__auto") -> dict:
    return {"datasource": PROM, "expr": expr, "legendFormat": legend, "range": True, "editorMode": "code"}


def sql(raw: str) -> dict:
    return {"datasource": PG, "format": "table", "rawSql": raw, "rawQuery": True, "editorMode": "code"}


def quantiles(metric: str, by: str = "queue", qs=QUANTILES) -> list[dict]:
    """histogram_quantile of a histogram (per ``by`` label, if any), one target per quantile."""
    labels, legend = (f"le, {by}", f" {{{{{by}}}}}") if by else ("le", "")
    return [prom(f"histogram_quantile({q}, sum by ({labels}) (rate({metric}_bucket[5m])))", name + legend)
            for q, name in qs]


def panel(kind: str, title: str, targets: list[dict], description: str = "", unit: str = "short",
          log: bool = False, lo: float | None = None, hi: float | None = None, threshold: float | None = None,
          **extra) -> dict:
    custom: dict = {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 0, "showPoints": "never", "spanNulls": False,
                    "scaleDistribution": {"type": "log", "log": 10} if log else {"type": "linear"}}
    steps = [{"color": "green", "value": None}]
    if threshold is not None:
        custom["thresholdsStyle"] = {"mode": "line"}
        steps.append({"color": "red", "value": threshold})
    defaults: dict = {"unit": unit, "custom": custom, "thresholds": {"mode": "absolute", "steps": steps}}
    defaults.update({k: v for k, v in (("min", lo), ("max", hi)) if v is not None})
    options: dict = {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                     "tooltip": {"mode": "multi", "sort": "desc"}}
    if kind == "stat":
        options = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                   "colorMode": "value", "graphMode": "area", "textMode": "auto"}
    elif kind == "table":
        options = {"showHeader": True, "cellHeight": "sm"}
    if kind in ("stat", "table"):
        del defaults["custom"]
    return {"type": kind, "title": title, "description": description, "datasource": targets[0]["datasource"],
            "targets": targets, "fieldConfig": {"defaults": defaults, "overrides": []},
            "options": options, **extra}


def graph(title: str, targets: list[dict], **kw) -> dict:
    return panel("timeseries", title, targets, **kw)


def row(title: str) -> dict:
    return {"type": "row", "title": title, "collapsed": False, "panels": []}


def lay_out(rows: list[list[dict]], height: int = 8) -> list[dict]:
    """Panels in rows of equal width (a lone row panel spans the page); ids and refIds assigned."""
    panels, y = [], 0
    for line in rows:
        x = 0
        for item in line:
            h = 1 if item["type"] == "row" else item.pop("height", height)
            w = item.pop("width", 24 // len(line))
            item.update(id=len(panels) + 1, gridPos={"h": h, "w": w, "x": x, "y": y})
            x += w
            for i, target in enumerate(item.get("targets", [])):
                target["refId"] = chr(ord("A") + i)
            panels.append(item)
        y += max(p["gridPos"]["h"] for p in panels[-len(line):])
    return panels


def pg_variable(name: str, label: str, query: str) -> dict:
    return {"name": name, "label": label, "type": "query", "datasource": PG, "query": query, "definition": query,
            "refresh": 1, "multi": False, "includeAll": False, "sort": 0, "hide": 0, "current": {}, "options": []}


def dashboard(uid: str, title: str, description: str, rows: list[list[dict]], variables: list[dict] = ()) -> dict:
    other = [{"title": "Descent", "type": "dashboards", "tags": ["descent"], "asDropdown": False,
              "includeVars": False, "keepTime": True, "targetBlank": False, "icon": "external link", "url": ""}]
    return {"id": None, "uid": uid, "title": title, "description": description, "tags": ["descent"],
            "timezone": "browser", "editable": False, "graphTooltip": 1, "refresh": "10s",
            "time": {"from": "now-1h", "to": "now"}, "schemaVersion": 39, "version": 1, "links": other,
            "annotations": {"list": []}, "templating": {"list": list(variables)}, "panels": lay_out(rows)}


# The text is the Prometheus `sweep` label (services/metrics_db.sweep_label): the name and the
# id's last 12 hex digits, its random tail (a UUIDv7's first digits are its creation time, alike
# for every sweep or member made within a minute).
SWEEP_VAR = ("SELECT name || ' · ' || right(id, 12) AS __text, id AS __value "
             "FROM sweeps ORDER BY created_at DESC LIMIT 200")
JOB_VAR = ("SELECT coalesce(sweep_values::text, name) || ' · ' || right(id, 12) AS __text, id AS __value "
           "FROM jobs WHERE sweep_id = '$sweep' ORDER BY ssr NULLS LAST LIMIT 500")
# The job's SSR at each step, thinned for long runs so the browser gets at most ~5000 points.
SSR_CURVE = """SELECT h.first_step + u.i - 1 AS step, u.v AS ssr
FROM history_chunks h, unnest(h.ssr) WITH ORDINALITY AS u(v, i)
WHERE h.job_id = '$job'
  -- steps 1, 1 + k, 1 + 2k, ... with k = (steps trained) / 5000, at least 1
  AND (h.first_step + u.i - 2) % (SELECT greatest(1, j.step / 5000) FROM jobs j WHERE j.id = '$job') = 0
ORDER BY step"""
LEADERBOARD = """SELECT id, status, stop_reason, step, ssr, sweep_values::text AS values
FROM jobs
WHERE sweep_id = '$sweep' AND ssr IS NOT NULL
ORDER BY ssr
LIMIT 10"""


def sweeps() -> dict:
    ssr_curve = panel("trend", "SSR curve of ${job:text}", [sql(SSR_CURVE)], "Sum of squared residuals at every step of the "
                      "job chosen above, read from history_chunks (thinned to ~5000 points).", log=True, width=14)
    ssr_curve["options"]["xField"] = "step"
    board = panel("table", "Leaderboard of ${sweep:text}", [sql(LEADERBOARD)],
                  "The sweep's 10 members with the lowest current SSR. Click an id to plot its curve.", width=10)
    board["fieldConfig"]["overrides"] = [{"matcher": {"id": "byName", "options": "id"}, "properties": [
        {"id": "links", "value": [{"title": "Plot this job",
                                   "url": "/d/descent-sweeps/descent-sweeps?var-sweep=${sweep}&var-job=${__value.raw}"}]}]}]
    rows = [
        [row("Convergence (running sweeps and those finished in the last 15 minutes)")],
        [graph("Best SSR per sweep", [prom("min by (sweep) (descent_sweep_best_ssr)", "{{sweep}}")],
               description="Lowest SSR any member of the sweep has reached.", log=True),
         graph("Median SSR per sweep", [prom("min by (sweep) (descent_sweep_median_ssr)", "{{sweep}}")],
               description="Median of the members' current SSR.", log=True)],
        [graph("Sweep progress", [prom("max by (sweep) (descent_sweep_progress_ratio)", "{{sweep}}")],
               description="Steps trained / steps planned.", unit="percentunit", lo=0, hi=1),
         graph("Diverged members per sweep", [prom("max by (sweep) (descent_sweep_diverged_ratio)", "{{sweep}}")],
               description="Fraction of members that diverged; the DescentSweepDiverging alert fires above 25%.",
               unit="percentunit", lo=0, hi=1, threshold=0.25)],
        [row("Jobs")],
        [graph("Jobs by status", [prom("max by (status) (descent_jobs)", "{{status}}")]),
         graph("Sweep members by status", [prom("max by (sweep, status) (descent_sweep_jobs)", "{{sweep}} {{status}}")])],
        [row("Training throughput")],
        [graph("Training steps/s per queue (one per network)", [prom("sum by (queue) (rate(descent_training_steps_total[1m]))",
                                                    "{{queue}}")], unit="ops"),
         graph("Queue wait (submit to first claim)", quantiles("descent_queue_wait_seconds"), unit="s"),
         graph("Checkpoint write latency", quantiles("descent_checkpoint_write_seconds"), unit="s")],
        [graph("Pack size (members)", quantiles("descent_pack_members") + [prom(
            "sum by (queue) (rate(descent_pack_members_sum[5m])) / sum by (queue) (rate(descent_pack_members_count[5m]))",
            "mean {{queue}}")]),
         graph("Pack step time", quantiles("descent_pack_step_seconds"), unit="s")],
        [row("One sweep and one job (PostgreSQL; choose them above)")],
        [ssr_curve, board],
    ]
    return dashboard("descent-sweeps", "Descent sweeps", "Convergence and throughput of Descent's sweeps.", rows,
                     [pg_variable("sweep", "Sweep", SWEEP_VAR), pg_variable("job", "Job", JOB_VAR)])


def service() -> dict:
    latency = "descent_http_request_duration_seconds_bucket[5m]"
    # "or vector(0)": no 5xx at all is a ratio of 0, not an empty panel.
    error_ratio = ('(sum(rate(descent_http_requests_total{code=~"5.."}[5m])) or vector(0)) '
                   "/ sum(rate(descent_http_requests_total[5m]))")
    rows = [
        [row("API")],
        [graph("Requests/s by route and code", [prom("sum by (route, code) (rate(descent_http_requests_total[1m]))",
                                                       "{{code}} {{route}}")], unit="reqps"),
         graph("Latency", [prom(f"histogram_quantile({q}, sum by (le) (rate({latency})))", name)
                           for q, name in ((0.5, "p50"), (0.95, "p95"), (0.99, "p99"))], unit="s")],
        [graph("Latency p95 by route", [prom(f"histogram_quantile(0.95, sum by (le, route) (rate({latency})))",
                                             "{{route}}")], unit="s"),
         graph("5xx error ratio", [prom(error_ratio, "5xx")], unit="percentunit", lo=0, threshold=0.05,
               description="Share of requests answered 5xx; the DescentApiErrors alert fires above 5% for 5 minutes.")],
        [row("Queues and workers")],
        [graph("Live workers per queue", [prom("max by (queue) (descent_workers)", "{{queue}}")], lo=0),
         graph("Jobs waiting per queue", [prom("max by (queue) (descent_queue_jobs)", "{{queue}}")], lo=0),
         graph("Oldest waiting job", [prom("max by (queue) (descent_queue_oldest_seconds)", "{{queue}}")], unit="s")],
        [row("Scheduler")],
        [graph("Scheduler lag (since last action)", [prom("max(descent_scheduler_last_action_age_seconds)", "lag")],
               unit="s", lo=0, threshold=60,
               description="Seconds since the leader last renewed its lease; DescentSchedulerStopped fires above 60."),
         graph("Scheduler pass duration", quantiles("descent_scheduler_pass_seconds", by=""), unit="s"),
         graph("Jobs dispatched/s", [prom("sum by (queue) (rate(descent_scheduler_dispatched_total[1m]))",
                                          "{{queue}}")], unit="ops")],
        [row("Jobs")],
        [graph("Jobs finished/s by status", [prom("sum by (status) (rate(descent_jobs_finished_total[5m]))",
                                                  "{{status}}")], unit="ops"),
         graph("Jobs submitted/s", [prom("sum(rate(descent_jobs_submitted_total[5m]))", "submitted")], unit="ops"),
         panel("stat", "Lost leases (15 min)", [prom("sum(increase(descent_lost_leases_total[15m]))", "lost")],
               "Claims whose worker stopped heartbeating (killed, paused, partitioned); the jobs were requeued.",
               threshold=1)],
        [row("Scrape targets")],
        [graph("Healthy targets per scrape job", [prom("sum by (job) (up)", "{{job}} up"),
                                                  prom("count by (job) (up == 0)", "{{job}} down")], lo=0)],
    ]
    return dashboard("descent-service", "Descent service", "Health of Descent's API, queues, workers and scheduler.",
                     rows)


def build() -> dict[str, dict]:
    """File name -> dashboard, as written to deploy/grafana/dashboards/."""
    return {"descent-sweeps.json": sweeps(), "descent-service.json": service()}


def render(board: dict) -> str:
    return json.dumps(board, indent=2, ensure_ascii=False) + "\n"


def main() -> int:
    OUT.mkdir(exist_ok=True)
    for name, board in build().items():
        (OUT / name).write_text(render(board), encoding="utf-8")
        print(f"wrote {OUT / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
