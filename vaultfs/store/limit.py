"""Bandwidth limits: one token bucket per direction, shared by every transfer of a process.

``[vault].upload_limit`` and ``download_limit`` (`vaultfs.config.RateSchedule`, overridden
by ``--limit-upload``/``--limit-download``) bound the bytes a process moves to and from
its store, whatever the command: S3 parts and ranged GETs, a ``file://`` store's copies.
The stores call `Limiter.take` with each piece before moving it (uploads) or after
receiving it (downloads, so the sender is held back by TCP's flow control), and the
call sleeps for as long as the rate needs. A hard link into a ``file://`` store on the
spool's filesystem moves no bytes and is not charged.

The bucket holds at most `BURST_SECONDS` of the rate and starts empty: a transfer never
runs ahead of the limit by more than a tenth of a second's worth, so any stretch of a
long transfer keeps to the rate. Bytes are reserved under a lock and the sleep happens
outside it, so threads share the rate in the order they asked.

The timetable is read with the wall clock of the local day (`testpoints.limit_clock`
lets a test start it at a chosen instant); a change of rate takes effect with the next
piece (a piece is at most `BURST_SECONDS` of the rate).

`Limiter.bound` says whether the limit has been what held transfers back in the last
seconds, so progress can say so.
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from vaultfs import testpoints
from vaultfs.config import RateSchedule, rate_text

BURST_SECONDS = 0.1  # the bucket's depth, in seconds of the rate
MIN_PIECE = 16 * 1024  # the smallest piece charged at once (low rates)
BOUND_RECENT = 2.0  # seconds: a wait this recent means the limit is the bound


class Limiter:
    """A token bucket whose rate follows a `RateSchedule`; thread-safe."""

    def __init__(
        self,
        schedule: RateSchedule,
        *,
        clock: Callable[[], float] | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.schedule = schedule
        self._clock = clock or testpoints.limit_clock()
        self._sleep = sleep
        self._lock = threading.Lock()
        self._tokens = 0.0
        self._last = time.monotonic()
        self._rate: int | None = None
        self._waited_at = -BOUND_RECENT  # monotonic time of the latest wait
        self.moved = 0  # bytes charged so far (limited or not)

    def rate(self) -> int | None:
        """Bytes per second now; None: no limit."""
        if not self.schedule.entries:
            return None
        t = time.localtime(self._clock())
        return self.schedule.rate_at(t.tm_hour * 3600 + t.tm_min * 60 + t.tm_sec)

    def take(self, n: int) -> None:
        """Charge `n` bytes, sleeping as long as the rate needs (in pieces of at most a
        burst, so a timetable's change applies within one)."""
        while n > 0:
            rate = self.rate()
            if rate is None:
                with self._lock:
                    self.moved += n
                    self._rate = None
                return
            piece = min(n, max(MIN_PIECE, int(rate * BURST_SECONDS)))
            wait = self._reserve(piece, rate)
            if wait > 0:
                self._sleep(wait)
            n -= piece

    def _reserve(self, piece: int, rate: int) -> float:
        """Take `piece` tokens (the balance may go below zero); return how long to wait."""
        with self._lock:
            now = time.monotonic()
            if self._rate != rate:  # a new limit: start from an empty bucket
                self._rate, self._tokens, self._last = rate, 0.0, now
            self._tokens = min(self._tokens + (now - self._last) * rate, rate * BURST_SECONDS)
            self._last = now
            self._tokens -= piece
            self.moved += piece
            wait = -self._tokens / rate if self._tokens < 0 else 0.0
            if wait > 0:
                self._waited_at = now + wait
            return wait

    def body(self, data: bytes | memoryview) -> bytes | memoryview | LimitedBody:
        """An upload's request body: `data` itself when no limit is configured (as before
        limits existed: botocore sends bytes without ``Expect: 100-continue``), else a
        `LimitedBody` that charges this limiter as it is read."""
        return LimitedBody(data, self) if self.schedule.entries else data

    def bound(self) -> bool:
        """Whether transfers waited for the limit in the last `BOUND_RECENT` seconds."""
        return time.monotonic() - self._waited_at < BOUND_RECENT


class LimitedBody(io.BytesIO):
    """An upload's body that charges `limiter` for each byte as it is first read.

    Only bytes past the furthest point read so far are charged: botocore reads a body
    twice over plain HTTP (once to sign it, then to send it) and again on its own
    retries, and the link carries each byte once per request.
    """

    def __init__(self, data: bytes | memoryview, limiter: Limiter) -> None:
        super().__init__(data)
        self._limiter = limiter
        self._charged = 0

    def read(self, size: int | None = -1) -> bytes:
        data = super().read(size)
        end = self.tell()
        if end > self._charged:
            self._limiter.take(end - self._charged)
            self._charged = end
        return data


@dataclass
class Bandwidth:
    """The two limiters of a process: uploads and downloads."""

    up: Limiter = field(default_factory=lambda: Limiter(RateSchedule()))
    down: Limiter = field(default_factory=lambda: Limiter(RateSchedule()))

    def note(self) -> str:
        """``"upload limit 8MiB/s"`` while a limit holds transfers back, else ``""``."""
        parts = [
            f"{what} limit {rate_text(lim.rate())}"
            for what, lim in (("upload", self.up), ("download", self.down))
            if lim.bound() and lim.rate() is not None
        ]
        return ", ".join(parts)


_shared: dict[tuple[RateSchedule, RateSchedule], Bandwidth] = {}
_shared_lock = threading.Lock()


def shared(upload: RateSchedule, download: RateSchedule) -> Bandwidth:
    """The process's limiters for these schedules: every store opened with the same
    limits shares one bucket per direction (a mount and its restore service, say)."""
    with _shared_lock:
        bw = _shared.get((upload, download))
        if bw is None:
            bw = _shared[upload, download] = Bandwidth(Limiter(upload), Limiter(download))
        return bw
