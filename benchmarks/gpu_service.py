"""The worker's path on a GPU: jobs stored, claimed, trained by ``services.training.run_pack`` with
CuPy, their checkpoints and history written, compared with the same jobs trained on NumPy.

What a ``descent worker --queues gpu`` child does with one message, in process on a SQLite file
(no broker, no API), so that it runs on a GPU machine that has only the service's Python
dependencies (``benchmarks/gpu_check.sh`` runs it; ``benchmarks/gpu_wheels.sh`` fetches the
dependencies the GPU image lacks, as wheels to carry there). Checks, per backend:

- the StatQuest job, ``"device": "gpu"``: b3 = 2.61 after 9 updates (min step size), SSR 20.42 at
  step 0, the frozen weights unmoved;
- a pack of 64 W4-sized jobs (1-32-32-1 tanh, 2000 points, 200 steps, checkpoint every 100):
  every job succeeded with one SSR per step and its checkpoints, and (CuPy against NumPy) the
  same steps, the SSR histories within 1e-9 relative.
Prints each backend's run_pack time for the pack. Exit status 0 when every check holds.

    python benchmarks/gpu_service.py                      # cupy and numpy
    python benchmarks/gpu_service.py --backends numpy --quick   # anywhere (the suite's smoke test)
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as a file: make `services` importable from the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SIZES = {"full": (64, 2000, 200), "quick": (8, 100, 20)}  # members, points, steps


def use_database(home: Path) -> None:
    """A fresh migrated SQLite database, and the settings pointed at it (before any import that
    reads them)."""
    os.environ["DESCENT_DATABASE_URL"] = f"sqlite:///{home / 'descent.db'}"
    os.environ["DESCENT_HOME"] = str(home)
    os.environ.pop("DESCENT_BROKER_URL", None)
    from services.db.migrate import upgrade

    upgrade(os.environ["DESCENT_DATABASE_URL"])


def pack_jobs(members: int, points: int, steps: int) -> list[dict]:
    """W4's pack as job bodies: one dataset, learning rates spread like the engine benchmark's."""
    x = np.linspace(-3.0, 3.0, points).reshape(-1, 1)
    data = {"x": x.tolist(), "y": np.sin(x).tolist()}
    rates = np.geomspace(1e-6, 3e-5, members)
    return [{"name": f"w4-{m}", "architecture": {"layers": [1, 32, 32, 1], "activation": "tanh"},
             "data": data, "learning_rate": float(rates[m]), "init": {"seed": m},
             "stop": {"max_steps": steps}, "checkpoint_every": steps // 2, "device": "gpu"} for m in range(members)]


def train(bodies: list[dict], backend: str) -> tuple[list[str], float]:
    """Submit the jobs, then one run_pack of them all on ``backend``: (job ids, its seconds)."""
    from services import jobs, training
    from services.spec import JobCreate

    ids = [jobs.submit_job(JobCreate.model_validate(body)).id for body in bodies]
    started = time.perf_counter()
    training.run_pack(ids, hostname="gpu-check", pid=os.getpid(), backend=backend)
    return ids, time.perf_counter() - started


def check_statquest(backend: str) -> list[str]:
    from services import jobs
    from services.examples import STATQUEST_B3, STATQUEST_SSR0, STATQUEST_UPDATES, statquest_job, statquest_named

    (job_id,), _ = train([statquest_job("gpu")], backend)
    job, history = jobs.get_job(job_id), jobs.history_arrays(job_id)
    named = statquest_named([layer.model_dump() for layer in jobs.get_parameters(job_id).layers])
    problems = []
    if job.status != "succeeded" or job.step != STATQUEST_UPDATES:
        problems.append(f"StatQuest: {job.status} at step {job.step}, expected succeeded at {STATQUEST_UPDATES}")
    if round(named["b3"], 2) != STATQUEST_B3:
        problems.append(f"StatQuest: b3 = {named['b3']:.4f}, expected {STATQUEST_B3}")
    if round(float(history[1][0]), 2) != STATQUEST_SSR0:
        problems.append(f"StatQuest: SSR at step 0 = {float(history[1][0]):.4f}, expected {STATQUEST_SSR0}")
    print(f"[{backend}] StatQuest: {job.status} after {job.step} updates, b3 = {named['b3']:.4f}", flush=True)
    return problems


def check_pack(backend: str, bodies: list[dict], steps: int) -> tuple[list[str], dict[str, np.ndarray], float]:
    """Train the pack; (problems, SSR history per job name, seconds)."""
    from services import jobs

    ids, seconds = train(bodies, backend)
    problems, curves = [], {}
    for body, job_id in zip(bodies, ids):
        job = jobs.get_job(job_id)
        stored, ssr = jobs.history_arrays(job_id)
        if job.status != "succeeded" or job.step != steps or not np.array_equal(stored, np.arange(steps + 1)):
            problems.append(f"{body['name']}: {job.status} at step {job.step}, {len(stored)} SSR points")
        curves[body["name"]] = np.asarray(ssr, dtype=np.float64)
    print(f"[{backend}] pack of {len(ids)} W4 jobs: run_pack {seconds:.3f} s "
          f"({1000 * seconds / steps:.2f} ms a step, checkpoints and history included)", flush=True)
    return problems, curves, seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default="cupy,numpy", help="comma-separated: cupy, numpy")
    parser.add_argument("--quick", action="store_true", help="a pack of 8 small jobs: a smoke test")
    args = parser.parse_args(argv)
    backends = args.backends.split(",")
    members, points, steps = SIZES["quick" if args.quick else "full"]
    use_database(Path(tempfile.mkdtemp(prefix="descent-gpu-service-")))
    bodies, problems, curves = pack_jobs(members, points, steps), [], {}
    for backend in backends:
        problems += check_statquest(backend)
        found, curves[backend], _ = check_pack(backend, bodies, steps)
        problems += found
    if {"cupy", "numpy"} <= set(backends):
        worst = max(float(np.max(np.abs(curves["cupy"][n] - curves["numpy"][n]) / np.abs(curves["numpy"][n])))
                    for n in curves["numpy"])
        print(f"largest relative SSR difference, CuPy against NumPy: {worst:.1e}")
        if not worst <= 1e-9:
            problems.append(f"CuPy and NumPy histories differ by {worst:.1e} relative (tolerance 1e-9)")
    print("\n".join(problems) if problems else "gpu_service: every check holds")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
