"""Every Prometheus metric of Descent, defined once (docs/design.md, "Metrics").

Two kinds, for two reasons:

- **Events, counted where they happen**: submits, finishes, training steps and the latencies of
  queue, checkpoint, engine, HTTP and scheduler. They live in the process that saw them; with
  ``PROMETHEUS_MULTIPROC_DIR`` set (every ``descent`` process sets it, ``services.metrics_dir``),
  prometheus-client keeps them in per-process files that the serving process merges, so totals
  survive recycled prefork children and several API processes.
- **State, read from the database at scrape time** (``services.metrics_db``): jobs by status,
  live workers, queue depth, scheduler lag and each sweep's convergence. The database owns that
  state, so a gauge can never drift from it, and per-sweep series vanish when the sweep leaves
  the window instead of living forever in a dead process's file.

No label holds a job id; label values are few and bounded (statuses, queues, route templates).
"""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client import Counter, Histogram, disable_created_metrics

disable_created_metrics()  # one series per counter: the *_created twins only double the scrape

QUEUES = ("cpu", "gpu")
FINISHED_STATUSES = ("succeeded", "diverged", "failed", "cancelled")

_LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_WAIT = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)
_STEP = (1e-6, 3e-6, 1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 0.01, 0.03, 0.1, 0.3, 1.0)
_MEMBERS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)

JOBS_SUBMITTED = Counter("descent_jobs_submitted", "Jobs accepted, each sweep member counted")
JOBS_FINISHED = Counter("descent_jobs_finished", "Jobs that reached a final status", ["status"])
TRAINING_STEPS = Counter("descent_training_steps", "Gradient-descent updates stored, one per network",
                         ["queue"])
QUEUE_WAIT = Histogram("descent_queue_wait_seconds", "Submit to first claim by a worker", ["queue"],
                       buckets=_WAIT)
CHECKPOINT_WRITE = Histogram("descent_checkpoint_write_seconds",
                             "One pack commit's transaction (one chunk or several held ones): checkpoints, history, final states",
                             ["queue"], buckets=_LATENCY)
PACK_STEP = Histogram("descent_pack_step_seconds", "Engine time of one update of a whole pack",
                      ["queue"], buckets=_STEP)
PACK_MEMBERS = Histogram("descent_pack_members", "Networks trained together in one engine pack",
                         ["queue"], buckets=_MEMBERS)
HTTP_REQUESTS = Counter("descent_http_requests", "HTTP requests answered", ["method", "route", "code"])
HTTP_DURATION = Histogram("descent_http_request_duration_seconds", "HTTP request latency",
                          ["method", "route"], buckets=_LATENCY)
SCHEDULER_PASS = Histogram("descent_scheduler_pass_seconds", "One scheduler pass as leader",
                           buckets=_LATENCY)
SCHEDULER_DISPATCHED = Counter("descent_scheduler_dispatched", "Jobs published to workers", ["queue"])
LOST_LEASES = Counter("descent_lost_leases", "Claims whose worker stopped renewing the lease")

for _status in FINISHED_STATUSES:  # every series exists from the start: rate() needs a zero
    JOBS_FINISHED.labels(_status)
for _queue in QUEUES:
    TRAINING_STEPS.labels(_queue)
    SCHEDULER_DISPATCHED.labels(_queue)


def count_finished(by_status: Mapping[str, int]) -> None:
    """Call after the transaction that finished the jobs committed, never before."""
    for status, n in by_status.items():
        if n:
            JOBS_FINISHED.labels(status).inc(n)


def queue_of(backend: str) -> str:
    """A worker's queue label: the gpu queue is the one served with CuPy."""
    return "gpu" if backend == "cupy" else "cpu"
