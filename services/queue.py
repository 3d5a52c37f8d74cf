"""The one Celery configuration, shared by the worker and by every process that publishes.

The message only rings the doorbell: the database is the truth (claims, fencing, leases live in
``services/db/checkpoints.py``). That is why redelivery is harmless and why acks are late.
This module knows the broker only; it never touches the database.
"""

from __future__ import annotations

import os
from pathlib import Path

from celery import Celery
from kombu import Queue

from services.broker_fs import broker_url
from services.config import Settings, get_settings

TRAIN_PACK = "descent.train_pack"
QUEUES = ("cpu", "gpu")

_senders: dict[tuple[int, int], tuple[Settings, Celery]] = {}


def make_celery(settings: Settings) -> Celery:
    """JSON only (the broker is not trusted with pickle); late acks, prefetch 1 and
    reject-on-lost so a long task is never reserved behind another or silently dropped."""
    app = Celery("descent", broker=broker_url(settings.broker_url), set_as_current=False)
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_max_tasks_per_child=settings.worker_max_tasks_per_child,
        worker_hijack_root_logger=False,
        # Training survives a broker hiccup; a duplicate delivery later is skipped by the claim.
        worker_cancel_long_running_tasks_on_connection_loss=False,
        broker_connection_retry_on_startup=True,
        broker_transport_options=transport_options(settings),
        task_default_queue="cpu",
        task_queues=[Queue(name, routing_key=name) for name in QUEUES],
    )
    return app


def transport_options(settings: Settings) -> dict:
    """Redis redelivers after ``visibility_timeout`` even while a task runs: make it long.
    The filesystem transport reads and writes one folder so any process on the host can publish."""
    options: dict = {"visibility_timeout": settings.visibility_timeout}
    if settings.broker_url.startswith("filesystem"):
        folder = Path(settings.broker_folder)
        for sub in ("queue", "processed", "control"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        options |= {
            "data_folder_in": str(folder / "queue"),
            "data_folder_out": str(folder / "queue"),
            "processed_folder": str(folder / "processed"),
            "control_folder": str(folder / "control"),
            "polling_interval": settings.broker_polling_interval,
        }
    return options


def sender(settings: Settings | None = None) -> Celery:
    """The publishing app of this process, cached per settings object and per pid (a forked
    process must not share its parent's broker connections)."""
    settings = settings or get_settings()
    key = (os.getpid(), id(settings))
    hit = _senders.get(key)
    if hit is None or hit[0] is not settings:
        hit = _senders[key] = (settings, make_celery(settings))
    return hit[1]


def reset_sender() -> None:
    """Forget cached publishing apps (tests that change the settings call this)."""
    for _, app in _senders.values():
        app.close()
    _senders.clear()


def publish_pack(job_ids: list[str], device: str) -> None:
    """Send the ids by task name. Only the scheduler calls this, after the jobs are committed,
    so a task never looks for a row that is not yet visible; it stamps the jobs afterwards."""
    if device not in QUEUES:
        raise ValueError(f"unknown device queue {device!r}")
    sender().send_task(TRAIN_PACK, args=[list(job_ids)], queue=device)
