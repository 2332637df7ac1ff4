"""``compression_level = "auto"``: a zstd level per frame, so that neither the link nor
the CPU waits for the other.

On a slow uplink the spool fills faster than the store takes it, and the CPU would idle
while bands wait; then each frame is worth more compression. On a fast link (or a local
store) compression is the bound, and any level above the lowest makes the snapshot
slower. `AutoLevel.next_level` is asked once per data frame, as the frame is handed to
the compression threads, and moves the level by one step at most (but see *idle*).

Two signals:

* the **backlog**: what the spool holds that is not yet sent, counted in bands: each
  band queued or in flight by the share of its bytes not yet sent
  (`spool.Uploader.unsent_bands`), plus the band being filled by how much of it is
  compressed and written (tar bytes against ``band_size``; counting bands, not bytes,
  makes the thresholds the same whatever the data's ratio);
* the **rates**: the link's (band bytes sent per second of uploading,
  `spool.Uploader.link_rate`) and, per level, what the compression threads turn out
  (compressed bytes per second of one thread, times the threads; a moving average of
  the frames compressed at that level).

The rules, in order:

* *idle* — backlog below ``IDLE`` (half a band): the uploader waits, or is about to →
  back to ``auto_min`` at once;
* backlog below ``LOWER_AT`` (one band): the uploader will wait for the band being
  filled → one level lower;
* backlog above ``RAISE_AT`` (1.5 bands: the next band is ready before the previous one
  is sent, and soon the queue of one band is full and the snapshot waits on it) →
  one level higher, only if this level turns out ``HEADROOM`` times what the link takes
  and the next level, if measured already, at least what it takes (levels are not a
  smooth scale: 12 → 15 costs 5 times the CPU, so the level is not raised on the backlog
  alone, which reacts only as fast as the link drains it);
* this level turns out less than the link takes → one level lower;
* otherwise the level stays.

So the level settles at the highest one whose compression keeps up with the link. A
local store takes each band at once, the backlog never reaches a band, and every frame
gets ``auto_min``, the fixed default's level. Levels above 3 keep level 3's window
(`band.compression.capped_compressor`), so no frame needs more memory to decompress
than a level-3 one.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

IDLE = 0.5  # bands of backlog below which the level drops to the lowest at once
LOWER_AT = 1.0  # bands of backlog below which it goes down
RAISE_AT = 1.5  # bands of backlog above which it may go up
HEADROOM = 1.25  # raise only while this level turns out this much more than the link takes
SMOOTHING = 0.3  # weight of a new frame in a level's moving average
RETRY_AFTER = 64  # frames after which a level measured too slow may be tried again


class AutoLevel:
    """The level of the next frame, from the spool's backlog and the rates (see the module)."""

    def __init__(
        self,
        lowest: int,
        highest: int,
        threads: int,
        backlog: Callable[[], float],
        link_rate: Callable[[], float | None],
    ) -> None:
        self.lowest, self.highest, self.threads = lowest, highest, threads
        self.level = lowest
        self._backlog = backlog
        self._link_rate = link_rate
        self._speed: dict[int, float] = {}  # level → compressed bytes per second of one thread
        self._measured_at: dict[int, int] = {}  # level → `_frames` when it was last measured
        self._frames = 0  # data frames asked for so far
        self._full_frame = 0  # the largest frame measured: the band's frame size
        self._lock = threading.Lock()

    def compressed(self, level: int, size: int, compressed_size: int, seconds: float) -> None:
        """A pool thread: one frame of `size` bytes at `level` made `compressed_size` bytes in
        `seconds`. A frame under half the size of the largest seen (a band's last) does
        not count: the fixed cost of a
        compression at a high level would make that level look many times slower than it is,
        and a level too slow is not tried again for `RETRY_AFTER` frames."""
        rate = compressed_size / max(seconds, 1e-6)
        with self._lock:
            self._full_frame = max(self._full_frame, size)
            if size < self._full_frame // 2:
                return
            old = self._speed.get(level)
            self._speed[level] = rate if old is None else old + (rate - old) * SMOOTHING
            self._measured_at[level] = self._frames

    def output(self, level: int) -> float | None:
        """Compressed bytes per second the threads turn out at `level` (None: not measured)."""
        with self._lock:
            speed = self._speed.get(level)
        return None if speed is None else speed * self.threads

    def next_level(self) -> int:
        """Called by the band writer for each data frame (the caller's thread)."""
        self._frames += 1
        backlog = self._backlog()
        link = self._link_rate()
        here = self.output(self.level)
        if backlog < IDLE:
            self.level = self.lowest
        elif backlog < LOWER_AT or (link is not None and here is not None and here < link):
            self.level = max(self.lowest, self.level - 1)
        elif backlog > RAISE_AT and link is not None and self._can_raise(here, link):
            self.level += 1
        return self.level

    def _can_raise(self, here: float | None, link: float) -> bool:
        if self.level >= self.highest or here is None or here < link * HEADROOM:
            return False
        above = self.output(self.level + 1)
        with self._lock:
            stale = self._frames - self._measured_at.get(self.level + 1, 0) > RETRY_AFTER
        return above is None or above >= link or stale
