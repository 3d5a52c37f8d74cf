"""API keys and the tenants they belong to, parsed from ``DESCENT_API_KEYS``.

Only SHA-256 digests of the keys are kept in memory, and a lookup compares the digest of the
offered key with every entry in constant time (``hmac.compare_digest``, no early exit), so
neither the answer's timing nor a memory dump gives a key away.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass

from services.config import Settings

MIN_KEY_LENGTH = 16
_TENANT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_KEY = re.compile(r"^[\x21-\x7e]+$")  # printable ASCII, no spaces: what fits in a Bearer header


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


@dataclass(frozen=True)
class KeyRing:
    """(digest, tenant) per key, and the digest of the operators' metrics key (or None)."""

    entries: tuple[tuple[bytes, str], ...] = ()
    metrics: bytes | None = None

    @property
    def enabled(self) -> bool:
        """Auth is on when any tenant key is configured."""
        return bool(self.entries)

    def tenant_of(self, key: str) -> str | None:
        offered, found = _digest(key), None
        for digest, tenant in self.entries:
            if hmac.compare_digest(offered, digest) and found is None:
                found = tenant
        return found

    def is_metrics_key(self, key: str) -> bool:
        return self.metrics is not None and hmac.compare_digest(_digest(key), self.metrics)

    @classmethod
    def from_settings(cls, settings: Settings) -> KeyRing:
        return cls.parse(settings.api_keys, settings.metrics_key)

    @classmethod
    def parse(cls, api_keys: str, metrics_key: str = "") -> KeyRing:
        """``"tenant:key,tenant:key"`` or ``"key,key"`` (each key alone is a tenant named after
        its digest); commas or whitespace separate entries, and an empty one (a trailing comma of
        a list edited by hand) is none. A bad entry is a ValueError that names it (by position,
        never by its key)."""
        entries: list[tuple[bytes, str]] = []
        for position, item in enumerate([item for item in re.split(r"[,\s]+", api_keys) if item], 1):
            tenant, sep, key = item.partition(":")
            if not sep:
                tenant, key = f"key-{hashlib.sha256(item.encode()).hexdigest()[:12]}", item
            _check(key, f"DESCENT_API_KEYS entry {position}")
            if not _TENANT.match(tenant):
                raise ValueError(f"DESCENT_API_KEYS entry {position}: tenant {tenant!r} must be 1-64 letters, "
                                 "digits, '_', '.' or '-'")
            if any(hmac.compare_digest(_digest(key), d) for d, _ in entries):
                raise ValueError(f"DESCENT_API_KEYS entry {position}: the same key is given twice")
            entries.append((_digest(key), tenant))
        metrics = None
        if metrics_key:
            _check(metrics_key, "DESCENT_METRICS_KEY")
            metrics = _digest(metrics_key)
            if any(hmac.compare_digest(metrics, d) for d, _ in entries):
                raise ValueError("DESCENT_METRICS_KEY must differ from every tenant's key")
        return cls(tuple(entries), metrics)


def _check(key: str, where: str) -> None:
    if len(key) < MIN_KEY_LENGTH or not _KEY.match(key):
        raise ValueError(f"{where}: a key needs at least {MIN_KEY_LENGTH} printable characters without "
                         "spaces (e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`)")
