"""The one Celery configuration and the publishing side (no worker needed here)."""

from __future__ import annotations

import pytest

from services import queue
from services.config import Settings


def test_celery_is_configured_for_long_tasks_and_json_only(tmp_path) -> None:
    settings = Settings(home=tmp_path, visibility_timeout=1234)
    conf = queue.make_celery(settings).conf
    assert (conf.task_serializer, conf.result_serializer, list(conf.accept_content)) == ("json", "json", ["json"])
    assert conf.task_acks_late and conf.task_reject_on_worker_lost and conf.worker_prefetch_multiplier == 1
    assert conf.task_ignore_result and conf.result_backend is None
    assert conf.task_default_queue == "cpu" and [q.name for q in conf.task_queues] == ["cpu", "gpu"]
    options = conf.broker_transport_options
    assert options["visibility_timeout"] == 1234 and options["polling_interval"] == settings.broker_polling_interval
    assert options["data_folder_in"] == options["data_folder_out"] == str(settings.broker_folder / "queue")
    assert all((settings.broker_folder / sub).is_dir() for sub in ("queue", "processed", "control"))


def test_redis_gets_the_visibility_timeout_and_no_folders(tmp_path) -> None:
    settings = Settings(home=tmp_path, broker_url="redis://127.0.0.1:6379/13", visibility_timeout=99)
    assert queue.make_celery(settings).conf.broker_transport_options == {"visibility_timeout": 99}
    assert not settings.broker_folder.exists()


def test_the_sender_is_cached_per_settings_object(tmp_path) -> None:
    first, second = Settings(home=tmp_path), Settings(home=tmp_path)
    try:
        assert queue.sender(first) is queue.sender(first)
        assert queue.sender(first) is not queue.sender(second)
    finally:
        queue.reset_sender()


def test_publish_refuses_an_unknown_queue(configured) -> None:
    with pytest.raises(ValueError, match="tpu"):
        queue.publish_pack(["x"], "tpu")
