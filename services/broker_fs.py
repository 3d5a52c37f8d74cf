"""The embedded broker: kombu's filesystem transport with three traps closed.

kombu 5.7 creates a message file and then writes it, while a reader takes (moves) any file with
the queue's name at once, so a racing worker could read an empty message and die with
"Unrecoverable error" (../shared/FIELD-NOTES.md). Here a message is written under a name no
reader matches and renamed into place, which is atomic within the folder; and a message that
still does not decode (a garbage file dropped into the folder) is logged and skipped instead of
stopping the consumer. The URL stays ``filesystem://``; ``broker_url`` maps it to this transport.

kombu binds a queue to an exchange by creating the exchange's table file and only then locking
it: a second process starting at that moment (two workers of ``descent up``) read the file
empty and died with "Expecting value". Here the file is created without truncation and locked
before it is read, and a reader that still finds it empty (created, not yet locked) retries.

kombu's reader takes a message by ``shutil.move`` into ``tempfile.gettempdir()`` under the
message's own name: when that is another filesystem (a tmpfs ``/tmp``), the move is a copy and
a delete, so two consumers copy the same file into the same path and truncate each other's copy
(a message lost, or read twice). Here a consumer takes a message by renaming it to a name of its
own inside the broker folder (atomic: exactly one consumer wins), then reads and deletes it.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import time
import uuid
from queue import Empty
from time import monotonic

from kombu.transport import TRANSPORT_ALIASES, filesystem
from kombu.utils.encoding import bytes_to_str, str_to_bytes
from kombu.utils.json import dumps, loads

log = logging.getLogger(__name__)
ALIAS = "descentfs"


class Channel(filesystem.Channel):
    def _queue_bind(self, exchange: str, routing_key: str, pattern: str, queue: str) -> None:
        path = self._exchange_file(exchange)
        self.control_folder.mkdir(exist_ok=True)
        entry = filesystem.exchange_queue_t(routing_key or "", pattern or "", queue or "")
        try:
            with os.fdopen(os.open(path, os.O_RDWR | os.O_CREAT, 0o644), "rb+", buffering=0) as table:
                fcntl.flock(table.fileno(), fcntl.LOCK_EX)  # released when the file closes
                queues = _table(table.read())
                if entry not in queues:
                    queues.insert(0, entry)
                    table.seek(0)
                    table.truncate()
                    table.write(str_to_bytes(dumps(queues)))
        except OSError as exc:
            raise filesystem.ChannelError(f"Cannot open {path}") from exc

    def get_table(self, exchange: str) -> list:
        path = self._exchange_file(exchange)
        for _ in range(_EMPTY_TABLE_TRIES):
            try:
                with open(path, "rb") as table:
                    fcntl.flock(table.fileno(), fcntl.LOCK_SH)
                    raw = table.read()
            except FileNotFoundError:
                return []
            except OSError as exc:
                raise filesystem.ChannelError(f"Cannot open {path}") from exc
            if raw.strip():
                return _table(raw)
            time.sleep(0.001)  # created by a bind that has not locked it yet
        return []

    def _put(self, queue: str, payload: dict, **kwargs: object) -> None:
        name = f"{int(round(monotonic() * 1000))}_{uuid.uuid4()}.{queue}.msg"
        final = os.path.join(self.data_folder_out, name)
        partial = os.path.join(self.data_folder_out, f".{name}.part")
        try:
            with open(partial, "wb") as out:
                out.write(str_to_bytes(dumps(payload)))
            os.replace(partial, final)
        except OSError as exc:
            raise filesystem.ChannelError(f"Cannot add file {final!r} to directory") from exc

    def _get(self, queue: str) -> dict:
        while True:
            try:
                payload = loads(bytes_to_str(self._take(queue)))
            except ValueError:  # JSONDecodeError: the file is gone already; take the next one
                log.error("skipped an unreadable message in queue %s of the embedded broker", queue)
                continue
            if _is_message(payload):
                return payload
            log.error("skipped a file that is not a message in queue %s of the embedded broker", queue)

    def _take(self, queue: str) -> bytes:
        """The oldest message of ``queue``, removed from it (kombu's ``_get`` order and
        ``store_processed``), taken by a rename within the folder; ``Empty`` when there is none."""
        wanted = f"{queue}.msg"
        for filename in sorted(os.listdir(self.data_folder_in)):
            if filename.partition(".")[2] != wanted:  # also skips our own ".*" files
                continue
            source = os.path.join(self.data_folder_in, filename)
            taken = os.path.join(self.data_folder_in, f".{filename}.{uuid.uuid4().hex}.taken")
            try:
                os.rename(source, taken)
            except OSError:  # another consumer took it first
                continue
            try:
                with open(taken, "rb") as f:
                    payload = f.read()
                if self.store_processed:
                    shutil.move(taken, os.path.join(self.processed_folder, filename))
                else:
                    os.remove(taken)
            except OSError as exc:
                raise filesystem.ChannelError(f"Cannot read file {taken!r} from queue.") from exc
            return payload
        raise Empty()


_EMPTY_TABLE_TRIES = 100


def _table(raw: bytes) -> list:
    """An exchange's table file's queues; an empty file (just created) has none."""
    return [filesystem.exchange_queue_t(*q) for q in loads(bytes_to_str(raw))] if raw.strip() else []


def _is_message(payload: object) -> bool:
    """What kombu's virtual ``Message`` reads without checking: a JSON object whose properties
    carry a delivery tag and whose headers (if any) are an object."""
    if not isinstance(payload, dict) or not isinstance(payload.get("properties"), dict):
        return False
    headers = payload.get("headers")
    properties = payload["properties"]
    return ("delivery_tag" in properties and isinstance(properties.get("delivery_info", {}), dict)
            and (headers is None or isinstance(headers, dict)))


class Transport(filesystem.Transport):
    Channel = Channel


TRANSPORT_ALIASES.setdefault(ALIAS, f"{__name__}:Transport")


def broker_url(url: str) -> str:
    """``filesystem://`` means this transport; any other URL is kombu's own."""
    return f"{ALIAS}://" + url[len("filesystem://"):] if url.startswith("filesystem://") else url
