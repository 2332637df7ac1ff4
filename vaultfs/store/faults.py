"""`FaultyStore`: a test wrapper that makes store calls fail, deterministically by seed.

It only raises transient StoreErrors, like a flaky network or a throttling
S3 would; it never alters bytes. Kinds of fault:

* ``throttle`` — 503 SlowDown before the call reaches the inner store;
* ``reset`` — a connection reset before the call;
* ``timeout`` — a read timeout before the call;
* ``lost_reply`` — the call is made (its effect happens), then the answer is
  lost: the caller sees an error although the write, delete or upload is done.

Each call draws once from a ``random.Random(seed)``; with probability ``rate``
it fails with one of ``kinds``. A listing may also break between two items.
``check_access`` is never faulted. Not thread-safe (tests drive it from one
thread); the counters are for assertions.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TypeVar

from vaultfs.store.base import ObjectInfo, ObjectStore, ProgressCallback, StoreError
from vaultfs.store.retry import archive_store

T = TypeVar("T")
ALL_KINDS: tuple[str, ...] = ("throttle", "reset", "timeout", "lost_reply")
_MESSAGES = {
    "throttle": "injected fault: 503 SlowDown",
    "reset": "injected fault: connection reset by peer",
    "timeout": "injected fault: read timeout",
    "lost_reply": "injected fault: the answer was lost after the request succeeded",
}


class FaultyStore:
    """Wraps ``inner``; fails about ``rate`` of calls with transient StoreErrors."""

    def __init__(self, inner: ObjectStore, rate: float, seed: int, kinds: Iterable[str] = ALL_KINDS) -> None:
        self.kinds = tuple(kinds)
        unknown = set(self.kinds) - set(ALL_KINDS)
        if unknown or not self.kinds:
            raise ValueError(f"fault kinds must be among {ALL_KINDS}, got {self.kinds}")
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"rate must be in [0, 1], got {rate}")
        self.inner = inner
        self.url = inner.url
        self.rate = rate
        self._rng = random.Random(seed)
        self.injected: Counter[str] = Counter()  # kind -> faults injected

    @property
    def total_injected(self) -> int:
        return sum(self.injected.values())

    def _draw(self) -> str | None:
        if self._rng.random() >= self.rate:
            return None
        return self._rng.choice(self.kinds)

    def _fail(self, kind: str, what: str) -> StoreError:
        self.injected[kind] += 1
        return StoreError(f"{what}: {_MESSAGES[kind]}", transient=True)

    def _call(self, what: str, op: Callable[[], T]) -> T:
        kind = self._draw()
        if kind is None:
            return op()
        if kind == "lost_reply":
            op()
        raise self._fail(kind, what)

    # -- the protocol -----------------------------------------------------------

    def put(self, key: str, data: bytes, *, if_none_match: bool = False) -> None:
        self._call(f"PUT {key}", lambda: self.inner.put(key, data, if_none_match=if_none_match))

    def put_file(
        self,
        key: str,
        path: Path,
        *,
        sha256: bytes,
        progress: ProgressCallback | None = None,
        storage_class: str = "STANDARD",
    ) -> None:
        self._call(
            f"PUT {key}",
            lambda: self.inner.put_file(
                key, path, sha256=sha256, progress=progress, storage_class=storage_class
            ),
        )

    def get(self, key: str) -> bytes:
        return self._call(f"GET {key}", lambda: self.inner.get(key))

    def get_range(self, key: str, start: int, length: int) -> bytes:
        return self._call(f"GET {key}", lambda: self.inner.get_range(key, start, length))

    def get_to_file(self, key: str, path: Path, progress: ProgressCallback | None = None) -> None:
        self._call(f"GET {key}", lambda: self.inner.get_to_file(key, path, progress))

    def head(self, key: str) -> ObjectInfo:
        return self._call(f"HEAD {key}", lambda: self.inner.head(key))

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        """May fail before the first item, or (as ``reset``) between two items."""
        kind = self._draw()
        if kind is not None and kind != "lost_reply":
            raise self._fail(kind, f"LIST {prefix}")
        break_after = self._rng.randrange(8) if self._draw() is not None else None
        for n, info in enumerate(self.inner.list(prefix)):
            if n == break_after:
                raise self._fail("reset", f"LIST {prefix}")
            yield info

    def delete(self, key: str) -> None:
        self._call(f"DELETE {key}", lambda: self.inner.delete(key))

    def abort_incomplete_uploads(self, prefix: str) -> int:
        return self._call(f"ABORT {prefix}", lambda: self.inner.abort_incomplete_uploads(prefix))

    def check_access(self) -> None:
        self.inner.check_access()

    def copy_to_class(self, key: str, storage_class: str) -> None:
        inner = archive_store(self.inner)
        self._call(f"COPY {key}", lambda: inner.copy_to_class(key, storage_class))

    def restore(self, key: str, days: int, tier: str) -> None:
        inner = archive_store(self.inner)
        self._call(f"RESTORE {key}", lambda: inner.restore(key, days, tier))

    def __repr__(self) -> str:
        return f"FaultyStore({self.inner!r}, rate={self.rate})"
