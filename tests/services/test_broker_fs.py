"""The embedded broker (``services.broker_fs``) under concurrent consumers: every message is
delivered exactly once, and a message never leaves the broker folder on its way to a consumer
(kombu's own reader moves it to ``tempfile.gettempdir()``: a copy and a delete when that is
another filesystem, where concurrent consumers truncate each other's copy)."""

from __future__ import annotations

import errno
import multiprocessing
import os
import queue
import time
from pathlib import Path

import pytest
from kombu import Connection

from services.broker_fs import broker_url

MESSAGES, CONSUMERS = 400, 4


def channel(folder: Path, **options: object):  # noqa: ANN201 (kombu's virtual channel)
    transport = {"data_folder_in": str(folder), "data_folder_out": str(folder), "polling_interval": 0.001} | options
    return Connection(broker_url("filesystem://"), transport_options=transport).default_channel


def consume(folder: Path, results: multiprocessing.Queue, options: dict) -> None:
    """Take messages until the queue stays empty; a rename out of the broker folder fails as it
    does across filesystems (EXDEV, so shutil.move copies and deletes), and is counted."""
    real_rename, left = os.rename, [0]

    def rename(source: str, target: str, *args: object, **kwargs: object) -> None:
        if os.path.dirname(os.path.abspath(source)) != os.path.dirname(os.path.abspath(target)):
            left[0] += 1
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        real_rename(source, target, *args, **kwargs)

    os.rename = rename  # this process only (forked)
    got, empty_since, broker = [], None, channel(folder, **options)
    while True:
        try:
            got.append(broker._get("cpu")["body"])
            empty_since = None
        except queue.Empty:
            empty_since = empty_since or time.monotonic()
            if time.monotonic() - empty_since > 1.5:
                break
            time.sleep(0.001)
    results.put((got, left[0]))


@pytest.mark.parametrize("store_processed", [False, True])
def test_concurrent_consumers_get_every_message_exactly_once(tmp_path: Path, store_processed: bool) -> None:
    folder, processed = tmp_path / "queue", tmp_path / "processed"
    folder.mkdir()
    processed.mkdir()
    options = {"store_processed": True, "processed_folder": str(processed)} if store_processed else {}
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    consumers = [context.Process(target=consume, args=(folder, results, options)) for _ in range(CONSUMERS)]
    for process in consumers:
        process.start()
    try:
        broker = channel(folder)
        for i in range(MESSAGES):
            broker._put("cpu", {"body": i, "properties": {"delivery_tag": str(i)}, "headers": {}})
        outcomes = [results.get(timeout=120) for _ in consumers]
    finally:
        for process in consumers:
            process.join(timeout=10)
            if process.is_alive():
                process.kill()
    received = sorted(body for got, _ in outcomes for body in got)
    assert received == list(range(MESSAGES)), (f"lost {sorted(set(range(MESSAGES)) - set(received))[:10]}, "
                                               f"{len(received) - len(set(received))} duplicated")
    if not store_processed:
        assert sum(left for _, left in outcomes) == 0, "messages were moved out of the broker folder"
    assert os.listdir(folder) == []
    if store_processed:  # kombu's option kept: every message backed up under its own name
        assert len(os.listdir(processed)) == MESSAGES


def test_a_garbage_file_is_skipped_and_the_next_message_delivered(tmp_path: Path) -> None:
    broker = channel(tmp_path)
    (tmp_path / "0_garbage.cpu.msg").write_bytes(b"{not json")
    broker._put("cpu", {"body": "real", "properties": {"delivery_tag": "1"}, "headers": {}})
    assert broker._get("cpu")["body"] == "real"
    with pytest.raises(queue.Empty):
        broker._get("cpu")
    assert os.listdir(tmp_path) == []


def bind_many(folder: str, name: str, start: multiprocessing.Event, errors: multiprocessing.Queue) -> None:
    """Bind 30 queues of this process's own to one exchange, as each worker of a stack does at
    start; any error is reported."""
    broker = channel(Path(folder), control_folder=str(Path(folder) / "control"))
    start.wait()
    try:
        for i in range(30):
            broker._queue_bind("celery", f"{name}-{i}", "", f"{name}-{i}")
    except Exception as exc:  # noqa: BLE001 (reported to the test)
        errors.put(repr(exc))
    errors.put("done")


def test_workers_binding_at_once_never_read_a_half_made_exchange_table(tmp_path: Path) -> None:
    """kombu creates an exchange's table file and locks it after: a process binding at the same
    moment read it empty and died ("Expecting value"). Eight processes bind at once, and the
    table has every binding."""
    start, errors = multiprocessing.Event(), multiprocessing.Queue()
    names = [f"w{i}" for i in range(8)]
    procs = [multiprocessing.Process(target=bind_many, args=(str(tmp_path), n, start, errors)) for n in names]
    for p in procs:
        p.start()
    start.set()
    reports = [errors.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    assert reports == ["done"] * len(procs)
    table = channel(tmp_path, control_folder=str(tmp_path / "control")).get_table("celery")
    assert {q.queue for q in table} == {f"{n}-{i}" for n in names for i in range(30)}


def test_an_exchange_table_just_created_reads_as_its_bindings_once_written(tmp_path: Path) -> None:
    """A reader that finds the file empty (created by a bind that has not written it) waits for
    the bind instead of failing or routing nothing."""
    import threading

    broker = channel(tmp_path, control_folder=str(tmp_path / "control"))
    (tmp_path / "control").mkdir(exist_ok=True)
    path = broker._exchange_file("celery")
    path.write_bytes(b"")
    threading.Timer(0.02, lambda: broker._queue_bind("celery", "cpu", "", "cpu")).start()
    assert [q.queue for q in broker.get_table("celery")] == ["cpu"]
    assert broker.get_table("missing") == []
