"""The spool: bands on local disk between being written and being on the store.

A band is written as ``<id>.tar.zst.part``; once complete and fsynced it is
renamed to ``<id>.tar.zst`` and uploaded by the `Uploader` thread, then deleted.
A snapshot killed at any point leaves at most complete bands, which the next
run uploads (`recover_spool`), and ``.part`` files, which it deletes.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
from dataclasses import replace
from functools import partial
from types import TracebackType

from vaultfs import band as bandfmt
from vaultfs import testpoints
from vaultfs.errors import CorruptionError
from vaultfs.fsutil import fsync_path
from vaultfs.model import BandInfo, parse_band_id
from vaultfs.snapshot.previews import PREVIEW_SUFFIX, put_preview, upload_preview
from vaultfs.vault import Vault

log = logging.getLogger(__name__)


def finish_spool_file(closed: bandfmt.ClosedBand) -> bandfmt.ClosedBand:
    """fsync a closed band, then rename ``X.tar.zst.part`` → ``X.tar.zst``: from then on a
    crash leaves a complete band that the next run uploads (`recover_spool`)."""
    bandfmt.sync_band(closed.path)
    final = closed.path.with_name(closed.path.name.removesuffix(".part"))
    os.replace(closed.path, final)
    fsync_path(final.parent)
    return replace(closed, path=final)


class Uploader:
    """Uploads closed bands in the background, one at a time, in order.

    The queue holds at most one band waiting, so the spool never holds more
    than the band being filled, one waiting and one in flight.

    The thread is not a daemon: it is stopped and joined on every path, which a
    ``with`` block ensures (``stop(abort=True)`` when the block raises, also on
    KeyboardInterrupt). After a failure the band in flight still finishes; a band
    still waiting stays a ``.part`` file, which the next run's `recover_spool` deletes.
    """

    def __init__(self, vault: Vault, collection: str) -> None:
        self.vault = vault
        self.collection = collection
        self.queue: queue.Queue[bandfmt.ClosedBand | None] = queue.Queue(maxsize=1)
        self.uploaded: list[BandInfo] = []
        self.error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self._abort = threading.Event()
        self._stop_sent = False  # the thread was told to stop (a second None would block)
        # Bands queued or in flight: [bytes not yet sent, size] by band id (the "auto"
        # level's backlog, `unsent_bands`); the store's progress reports what was sent.
        self._unsent: dict[str, list[int]] = {}
        self._unsent_lock = threading.Lock()
        self.busy_seconds = 0.0  # time spent uploading bands (the summary's upload rate)
        self._sent_bytes = 0  # band bytes the store reported sent
        self._began: float | None = None  # monotonic start of the upload in flight

    def link_rate(self) -> float | None:
        """Band bytes sent per second of uploading so far (None: nothing sent yet)."""
        with self._unsent_lock:
            busy = self.busy_seconds + (time.monotonic() - self._began if self._began is not None else 0.0)
            return self._sent_bytes / busy if self._sent_bytes and busy > 0 else None

    def unsent_bands(self) -> float:
        """Closed bands not yet on the store, in bands: each counts the share of its bytes
        not yet sent (one queued and half of one in flight: 1.5)."""
        with self._unsent_lock:
            return sum(unsent / size for unsent, size in self._unsent.values() if size)

    def _sent(self, band: str, n: int | None) -> None:
        """`n` more bytes of `band` sent (None: all of them, or given up on)."""
        with self._unsent_lock:
            if n is None:
                self._unsent.pop(band, None)
            elif band in self._unsent:
                self._unsent[band][0] -= n
                self._sent_bytes += n

    def __enter__(self) -> Uploader:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop(abort=exc_type is not None)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="vaultfs-upload")
        self._stop_sent = False
        self._thread.start()

    def put(self, closed: bandfmt.ClosedBand) -> None:
        self._raise()
        with self._unsent_lock:
            self._unsent[closed.band_id] = [closed.size, closed.size]
        self.queue.put(closed)

    def drain(self) -> None:
        self.queue.join()
        self._raise()

    def stop(self, *, abort: bool) -> None:
        """Stop the thread and join it; without `abort`, after the queued bands are
        uploaded (and raise an upload's error). Again after a stop: nothing."""
        thread = self._thread
        if thread is None:
            return
        if abort:
            self._abort.set()
        if not self._stop_sent:
            self.queue.put(None)
            self._stop_sent = True
        thread.join()
        self._thread = None
        if not abort:
            self._raise()

    def _raise(self) -> None:
        if self.error is not None:
            err, self.error = self.error, None
            raise err

    def _run(self) -> None:
        while True:
            closed = self.queue.get()
            try:
                if closed is None:
                    return
                if self._abort.is_set() or self.error is not None:
                    continue
                closed = finish_spool_file(closed)
                testpoints.reach("band-closed")
                band = closed.band_id
                with self._unsent_lock:
                    self._began = time.monotonic()
                try:
                    upload_preview(self.vault, band)  # before the band: no band without it
                    info = self.vault.upload_band(closed, self.collection, partial(self._sent, band))
                finally:
                    self._sent(band, None)  # on the store, or given up: not waiting any more
                    with self._unsent_lock:
                        self.busy_seconds += time.monotonic() - (self._began or 0.0)
                        self._began = None
                self.uploaded.append(info)
                testpoints.reach("band-uploaded")
                closed.path.unlink(missing_ok=True)
            except BaseException as e:  # handed to the main thread
                self.error = e
            finally:
                self.queue.task_done()


def recover_spool(vault: Vault) -> list[str]:
    """Finish what a killed snapshot (or compact, or recompress) left: upload complete
    bands, drop partial ones. A complete band's finished preview object (``<id>.preview``,
    which `vaultfs recompress` renames into place just before its band) goes up first, as
    it would have; one whose band is not complete is dropped.

    Returns the ids of the bands uploaded now.
    """
    recovered: list[str] = []
    for path in sorted(vault.spool_dir.iterdir()):
        name = path.name
        if name.endswith(".part"):
            path.unlink()
            continue
        if name.endswith(PREVIEW_SUFFIX):
            if not path.with_name(name.removesuffix(PREVIEW_SUFFIX) + ".tar.zst").exists():
                path.unlink()  # its band was not complete: it is gone too
            continue
        if not name.endswith(".tar.zst"):
            continue
        try:
            band_id = parse_band_id(name.removesuffix(".tar.zst"), f"spool file {path}")
        except CorruptionError as e:  # not ours: leave it for the owner to look at
            log.warning("%s", e.message)
            continue
        preview = path.with_name(band_id + PREVIEW_SUFFIX)
        if vault.catalog.band(band_id) is None:
            if preview.exists():
                put_preview(vault, band_id, preview)
            closed = bandfmt.reopen_closed(path)
            doc = json.loads(closed.catalog)
            replaces = tuple(
                parse_band_id(b, f"the catalog of spool band {band_id}")
                for b in doc.get("recompressed_from", ())
            )
            vault.upload_band(closed, str(doc.get("collection", "")), replaces=replaces)
            recovered.append(band_id)
        preview.unlink(missing_ok=True)
        path.unlink()
    vault.store.abort_incomplete_uploads("bands/")
    return recovered
