"""``descent``: run the service's processes, alone (production) or together (``up``, ``demo``),
and use it (``submit``, ``watch``, ``params``... in ``services.cli_client``, through the HTTP API).

``api`` and ``worker`` are what a deployment runs, one per container; ``up`` supervises both on
one machine with the same commands, so the embedded stack tests the production code path. This
module never imports ``api`` or ``worker``: uvicorn and Celery load them by name.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Annotated

import typer

from services import cli_client, metrics_dir
from services.config import get_settings

app = typer.Typer(help="Descent: train packs of small neural networks by gradient descent.", no_args_is_help=True)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
RUN = "Run the service"
app.add_typer(db_app, name="db", rich_help_panel=RUN)
app.add_typer(cli_client.app)

Port = Annotated[int, typer.Option(min=1, max=65535, help="TCP port of the API")]
Host = Annotated[str, typer.Option(help="Interface the API listens on")]
MetricsPort = Annotated[int | None, typer.Option(min=1, max=65535, help="Serve this process tree's "
                        "metrics at http://0.0.0.0:PORT/metrics (compose; `descent up` serves them on the API)")]


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Bring the schema up to date (Alembic migrations to head)."""
    from services.db.migrate import SchemaTooNew, upgrade

    try:
        upgrade()
    except SchemaTooNew as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    typer.echo("database schema is up to date")


@app.command("api", rich_help_panel=RUN, short_help="Serve the HTTP API (uvicorn).")
def run_api(
    host: Host = "127.0.0.1",
    port: Port = 8000,
    workers: Annotated[int, typer.Option(min=1, help="API processes sharing the port")] = 1,
) -> None:
    """Serve the HTTP API (uvicorn; with --workers > 1, a supervisor and that many processes).
    ``/metrics`` merges the metrics of every API process."""
    metrics_dir.ensure()  # before anything imports prometheus-client
    import uvicorn

    # uvicorn stops gracefully on SIGTERM, then raises it again under the handler it found: the
    # default one would kill this process before its exit hooks (the metrics folder's removal).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    uvicorn.run("api.main:app", host=host, port=port, log_level="warning", access_log=False, workers=workers)


@app.command("worker", rich_help_panel=RUN, short_help="Run a Celery training worker.")
def run_worker(
    queues: Annotated[str, typer.Option(help="Comma-separated queues: cpu, gpu")] = "cpu",
    concurrency: Annotated[int, typer.Option(min=1, help="Pool processes")] = 1,
    name: Annotated[str | None, typer.Option(help="Celery node name, e.g. cpu1@%h")] = None,
    loglevel: Annotated[str, typer.Option(help="Celery log level")] = "INFO",
    metrics_port: MetricsPort = None,
) -> None:
    """Replace this process with a prefork Celery worker for ``worker.app``.

    A pack from the ``gpu`` queue trains with CuPy, one from the ``cpu`` queue with NumPy, so a
    worker of ``cpu,gpu`` serves both (a gpu worker gets DESCENT_ENGINE_BACKEND=cupy: no NumPy
    warm-up before the fork). A worker of the gpu queue first checks that this host can compute
    with CuPy (``gpu_problem``) and exits with one line if not.
    """
    _check_queues(queues)
    env = os.environ.copy()
    metrics_dir.ensure(env)  # shared by the pool's children; the parent serves --metrics-port
    if metrics_port is not None:
        env["DESCENT_METRICS_PORT"] = str(metrics_port)
    env["DESCENT_WORKER_QUEUES"] = queues
    if "gpu" in queues.split(","):
        env["DESCENT_ENGINE_BACKEND"] = "cupy"
    argv = [sys.executable, "-m", "celery", "-A", "worker.app", "worker", "-Q", queues,
            "-c", str(concurrency), "--pool", "prefork", "--loglevel", loglevel]
    if name:
        argv += ["-n", name]
    sys.stdout.flush()
    os.execve(sys.executable, argv, env)


def _check_queues(queues: str) -> None:
    """Exit with one line on a queue that does not exist (a worker of ``gpus`` would consume
    nothing, for ever) or a gpu queue this host cannot compute for (``gpu_problem``)."""
    from services.queue import QUEUES  # Celery is loaded by the worker anyway

    unknown = sorted(set(queues.split(",")) - set(QUEUES))
    if unknown:
        typer.echo(f"error: --queues {queues}: unknown queue {', '.join(map(repr, unknown))}; "
                   f"the queues are {', '.join(QUEUES)}", err=True)
        raise typer.Exit(2)
    problem = gpu_problem() if "gpu" in queues.split(",") else None
    if problem:
        typer.echo(f"error: --queues {queues} trains on CuPy, and this host cannot ({problem}): install the "
                   "gpu extra (pip install '.[gpu]'; Dockerfile.gpu has it) on a host with an NVIDIA GPU, "
                   "or serve --queues cpu", err=True)
        raise typer.Exit(1)


# Imports CuPy, finds a device, and runs a reduction (an NVRTC kernel) and a product (cuBLAS):
# what a pack of the gpu queue needs first.
_GPU_PROBE = """
import cupy
if cupy.cuda.runtime.getDeviceCount() < 1:
    raise RuntimeError("no CUDA device")
if int(cupy.arange(3).sum()) != 3 or float((cupy.ones((2, 2)) @ cupy.ones((2, 2))).sum()) != 8.0:
    raise RuntimeError("CuPy computed a wrong result")
"""


def gpu_problem(timeout: float = 300.0) -> str | None:
    """Why this host cannot train the gpu queue's packs (the probe's last error line), or None.

    A gpu worker without CuPy (or without a usable GPU) used to start, announce itself as a live
    gpu worker (so the scheduler sent it packs and DescentNoWorkerForQueue stayed quiet) and fail
    every gpu job it claimed at once with ``No module named 'cupy'``. Refused here, it exits
    (compose restarts it, visibly) and the gpu jobs wait queued for a worker that can train them.
    The probe runs in a child process: CUDA set up here would not survive the exec into Celery
    and its fork into the pool."""
    import subprocess

    try:
        done = subprocess.run([sys.executable, "-c", _GPU_PROBE], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return f"the CuPy check took over {timeout:.0f} s"
    if done.returncode == 0:
        return None
    lines = [line.strip() for line in done.stderr.splitlines() if line.strip()]
    return lines[-1] if lines else f"the CuPy check exited with {done.returncode}"


@app.command("scheduler", rich_help_panel=RUN,
             short_help="Pack queued jobs and dispatch them; requeue lost work; cut rungs.")
def run_scheduler(metrics_port: MetricsPort = None) -> None:
    """Pack queued jobs and publish them; requeue work whose worker died; cut sweep rungs.

    Run one or several (only one acts at a time; another takes over when it dies)."""
    import logging

    metrics_dir.ensure()
    from services import heap, metrics_export
    from services.scheduler import serve
    from services.stack import raise_on_sigterm

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    raise_on_sigterm()
    if metrics_port is not None:
        metrics_export.serve(metrics_port)
    heap.freeze()
    try:
        serve()
    except KeyboardInterrupt:
        typer.echo("scheduler stopped")


@app.command("up", rich_help_panel=RUN, short_help="Run the whole stack here (API, scheduler, workers) until Ctrl-C.")
def run_up(
    port: Port = 8000,
    host: Host = "127.0.0.1",
    workers: Annotated[int, typer.Option(min=1, help="Worker processes (cpu queue)")] = 1,
    api_workers: Annotated[int | None, typer.Option(
        min=1, help="API processes sharing the port (default: one per two cores)")] = None,
) -> None:
    """Run the API, the scheduler and workers on this machine until Ctrl-C or SIGTERM (SQLite +
    filesystem broker by default). A process that dies is restarted; workers stopped by Ctrl-C
    checkpoint and release their jobs, which resume at the next start. A busy port, or a home
    whose stack is running, is refused before anything starts."""
    from services.stack import Stack, StackError, auth_note, default_api_workers, raise_on_sigterm

    raise_on_sigterm()
    api_workers = api_workers or default_api_workers()
    home = Path(os.environ.get("DESCENT_HOME") or get_settings().home)
    try:
        with Stack(home, host=host, port=port, workers=workers, api_workers=api_workers) as stack:
            settings = get_settings()
            typer.echo(f"Descent is serving at {stack.url} (page {stack.url}/, docs {stack.url}/docs)")
            typer.echo(f"  {auth_note(settings)}")
            typer.echo(f"  home {stack.home}\n  database {_redact(settings.database_url)}"
                       f"\n  broker {_redact(settings.broker_url)}\n  workers {workers}, starting (jobs wait for them; "
                       "a line says when they are ready); Ctrl-C stops")
            started, waiting = time.monotonic(), True
            while True:
                stack.supervise(lambda line: typer.echo(line, err=True))
                if waiting and stack.live_workers() >= workers:
                    waiting = False
                    typer.echo(f"{time.strftime('%H:%M:%S')} workers ready: {workers} of {workers}, "
                               f"{time.monotonic() - started:.0f} s after the API")
                time.sleep(0.2)
    except KeyboardInterrupt:
        typer.echo("stopped")
    except StackError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc


@app.command("demo", rich_help_panel=RUN,
             short_help="Start a stack, train the StatQuest job with the client, check b3 = 2.61.")
def run_demo(
    port: Port = 8765,
    home: Annotated[Path | None, typer.Option(
        help="The demo stack's home; a fresh temporary one if absent (DESCENT_HOME is not read)")] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the job")] = 120.0,
) -> None:
    """Start the embedded stack, train the StatQuest network with the client (as `descent submit`
    and `descent watch` do), check b3 = 2.61, stop."""
    from descent_client import DescentError
    from services.demo import run_statquest
    from services.stack import Stack, StackError, raise_on_sigterm

    raise_on_sigterm()
    temporary = home is None
    home = home or Path(tempfile.mkdtemp(prefix="descent-demo-"))
    ok = False
    try:
        with Stack(home, port=port, workers=1, log_dir=home / "logs") as stack:
            typer.echo(f"Descent is serving at {stack.url} (home {stack.home})")
            ok = run_statquest(stack.url, typer.echo, timeout)
    except (StackError, DescentError, KeyboardInterrupt) as exc:
        typer.echo(f"error: {str(exc) or 'interrupted'}; logs in {home / 'logs'}", err=True)
    if ok and temporary:
        shutil.rmtree(home, ignore_errors=True)
    elif not ok:
        typer.echo(f"logs kept in {home / 'logs'}", err=True)
    raise typer.Exit(0 if ok else 1)


def _redact(url: str) -> str:
    """Never print a password that a URL may carry."""
    if "@" not in url or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"


if __name__ == "__main__":
    app()
