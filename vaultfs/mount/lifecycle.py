"""The mount's lifecycle: mount, serve, background, signals, clean unmount.

* `mount` runs the filesystem. In the background (the default) it forks first;
  the child opens the vault, mounts, and reports through a pipe, so the command
  returns 0 only once the mount is up, or prints the child's error and fails.
  The child then detaches (setsid, std streams to /dev/null) and logs to a file.
* `serve` owns the trio nursery: pyfuse3's main loop, a signal watcher and the
  `RestoreService`. SIGTERM, SIGINT and SIGHUP end the loop and unmount
  cleanly; cancelling the nursery ends the restore watcher with it. An unexpected
  exception out of the loop is logged and the mount is *left in place*: the
  kernel then answers ENOTCONN, which no mirroring job mistakes for an empty
  backup; `vaultfs umount` clears it.
* `unmount` is ``fusermount3 -u`` with clear messages; it also clears a crashed
  (ENOTCONN) mount.

The restore service (docs/mount.md, docs/restore.md):

* An open of a file whose band is not readable asks `OnDemandRestores` whether
  to request the band's restore (auto_restore, the opener's process, the band's
  state, the daily budget). Requests are serialised per band: the first open
  starts one task that makes the request (in a worker thread) and every open of
  that band meanwhile waits for the same task, at most `REQUEST_WAIT_S`; once
  the catalog says ``restoring``, later opens are no-ops. The open then answers
  ENODATA. The request's log line names the process and the file; refused opens are
  logged once a minute per (process, band) (`askers.RefusalLog`). Who asked is
  recorded per band in the catalog (`askers`, ``vaultfs restore status`` shows it),
  and ``on_restore_requested BAND`` runs (no shell; facts in `askers.hook_env`).
* The watcher polls every ``[mount].poll_interval`` seconds, and at once on
  SIGUSR1 (tests and impatient users): it refreshes every restoring/restored
  band (HEAD), fetches restored bands into the cache when ``fetch_restored``
  (making room: least recently used out, never a band with an open handle), and
  starts ``on_restore_ready BAND`` (no shell; `askers.hook_env`, with the files that
  asked) for each band that became ready.
  Store calls run in worker threads under the service's limiter; a failed poll
  is logged and the next one runs as usual.
"""

from __future__ import annotations

import logging
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pyfuse3
import trio

from vaultfs import testpoints
from vaultfs.errors import UsageError, VaultError
from vaultfs.malloc import relax_cycle_collector
from vaultfs.model import BandId, BandInfo, RestoreAsker
from vaultfs.mount.askers import Opener, RefusalLog, asker, current_askers, describe, hook_env
from vaultfs.mount.fuse_ops import VaultOperations
from vaultfs.mount.mountpoint import mounted_fstype
from vaultfs.mount.restore_policy import (
    BandCache,
    OnDemandRestores,
    ProcessMatcher,
    fetch_band,
    parse_rules,
    poll_restores,
)
from vaultfs.mount.view import MountInfo, VaultView, start_threads
from vaultfs.vault import Vault

log = logging.getLogger("vaultfs.mount")

READ_THREADS = 8  # worker threads for reads (decompression releases the GIL)
STORE_THREADS = 2  # worker threads for restore requests and the watcher's store calls
REQUEST_WAIT_S = 10.0  # an open waits at most this long for its band's restore request
POLL_SIGNAL = signal.SIGUSR1  # the watcher polls now


@dataclass(frozen=True, slots=True)
class MountOptions:
    allow_other: bool = False
    foreground: bool = False
    debug: bool = False
    log_file: Path | None = None  # background mode; None: <state_dir>/mount.log


def fuse_options(opts: MountOptions) -> set[str]:
    """Mount options: read-only, kernel-enforced permissions, no setuid or devices."""
    out = {"ro", "default_permissions", "nosuid", "nodev", "fsname=vaultfs", "subtype=vaultfs"}
    if opts.allow_other:
        out.add("allow_other")
    if opts.debug:
        out.add("debug")
    return out


def mount(open_vault: Callable[[], Vault], mountpoint: Path, opts: MountOptions, default_log: Path) -> int:
    """Mount every version at `mountpoint`; returns the exit status (see module docstring)."""
    _check_mountpoint(mountpoint)
    if opts.foreground:
        return _run(open_vault, mountpoint, opts, report=None)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the daemon
        os.close(read_end)
        code = 1
        try:
            os.setsid()
            _log_to_file(opts.log_file or default_log, opts.debug)
            code = _run(open_vault, mountpoint, opts, report=write_end)
        except BaseException as e:  # report, never return into the caller's code
            message = e.message if isinstance(e, VaultError) else f"{type(e).__name__}: {e}"
            log.error("mount failed: %s", message)
            _report(write_end, "error " + message)
        finally:
            logging.shutdown()
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as r:
        answer = r.read().decode(errors="replace")
    if not answer.startswith("ok"):
        message = answer.removeprefix("error ").strip() or "the mount process died at start"
        raise VaultError(f"cannot mount {mountpoint}: {message}")
    return 0


def _check_mountpoint(mountpoint: Path) -> None:
    if mounted_fstype(mountpoint) is not None:
        raise VaultError(f"{mountpoint} is already a mount point: `vaultfs umount {mountpoint}` first")
    if not mountpoint.is_dir():
        raise UsageError(f"{mountpoint} is not a directory: create it first (mkdir -p)")


def _run(open_vault: Callable[[], Vault], mountpoint: Path, opts: MountOptions, report: int | None) -> int:
    vault = open_vault()
    view: VaultView | None = None
    try:
        info = MountInfo(store=vault.config.store)
        view = VaultView(vault, info)
        service = RestoreService(vault, view)
        info.status_lines = service.status_lines
        ops = VaultOperations(view, trio.CapacityLimiter(READ_THREADS), service.on_unreadable)
        try:
            pyfuse3.init(ops, str(mountpoint), fuse_options(opts))
        except RuntimeError as e:
            raise VaultError(
                f"FUSE refused the mount ({e}): is /dev/fuse there and fuse3 "
                "installed? --allow-other needs user_allow_other in /etc/fuse.conf "
                "unless run as root"
            ) from None
        log.info("mounted %s at %s (pid %d)", vault.config.store, mountpoint, os.getpid())
        if report is not None:
            _detach()
            _report(report, "ok")
        start_threads(view)  # after the fork: threads do not survive it
        relax_cycle_collector()  # the node table and prepared directories are long-lived
        return trio.run(serve, mountpoint, service)
    finally:
        if view is not None:
            view.close()
        vault.close()


async def serve(mountpoint: Path, service: RestoreService | None = None) -> int:
    """Run pyfuse3's loop until unmounted or signalled; 0 after a clean unmount."""
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_watch_signals, nursery.cancel_scope)
            if service is not None:
                await nursery.start(service.run)
            await pyfuse3.main(min_tasks=2, max_tasks=64)
            nursery.cancel_scope.cancel()
    except BaseException:
        log.exception(
            "the mount loop crashed: leaving %s in place (ENOTCONN); clear it with `vaultfs umount %s`",
            mountpoint,
            mountpoint,
        )
        pyfuse3.close(unmount=False)
        raise
    pyfuse3.close(unmount=True)
    log.info("unmounted %s", mountpoint)
    return 0


async def _watch_signals(scope: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async for signum in signals:
            log.info("%s: unmounting", signal.Signals(signum).name)
            pyfuse3.terminate()
            return


def _report(fd: int, message: str) -> None:
    try:
        os.write(fd, message.encode())
        os.close(fd)
    except OSError:
        pass


def _detach() -> None:
    """Let go of the caller's terminal and pipes (a caller waiting for EOF must get it)."""
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)
    sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the daemon
    sys.stderr = open(os.devnull, "w")  # noqa: SIM115


def _log_to_file(path: Path, debug: bool) -> None:
    from vaultfs import logsafe  # here, not at the top: only the daemon needs it

    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600))
    os.chmod(path, 0o600)  # it names files and bands: for the owner only, like the state
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s vaultfs[%(process)d]: %(levelname)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    logsafe.install(root)


class RestoreService:
    """Restores for the mount: requests on open, and the watcher (see the module docstring)."""

    def __init__(self, vault: Vault, view: VaultView) -> None:
        self.vault = vault
        self.view = view
        self.settings = vault.config.mount
        matcher = ProcessMatcher(parse_rules(self.settings.no_restore_processes))
        self.policy = OnDemandRestores(vault, matcher)
        self.cache = BandCache(vault, self.settings.cache_size)
        self.limiter = trio.CapacityLimiter(STORE_THREADS)
        self._nursery: trio.Nursery | None = None
        self._requests: dict[BandId, trio.Event] = {}
        self._wake = trio.Event()
        self.polls = 0
        self.last_poll_ns = 0
        self.signals = 0  # SIGUSR1 received
        self.answered = 0  # `signals` as seen at the start of the last finished poll
        self.refusals = RefusalLog(testpoints.mount_clock())  # refused opens: a line a minute

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The service's own nursery: the watcher, SIGUSR1, requests and hooks."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                with trio.open_signal_receiver(POLL_SIGNAL) as signals:
                    nursery.start_soon(self._on_signals, signals)
                    task_status.started()
                    await self._watch()
        finally:
            for line in self.refusals.flush():  # the counts of the last minute
                log.info("%s", line)

    # ---- opens ---------------------------------------------------------------------------

    async def on_unreadable(self, band: BandId, who: Opener) -> None:
        """An open of a file in `band` (not readable now): maybe request its restore."""
        asked = asker(who)  # the process looked up now, while it is alive
        reason = self.policy.refusal(band, who.pid)
        if reason is not None:
            for line in self.refusals.refused(
                who.pid, band, f"no restore of band {band} requested: {reason} ({describe(asked)})"
            ):
                log.info("%s", line)
            self._note_asker(band, asked, person_only=True)  # a person's open of a restoring band
            return
        event = self._requests.get(band)
        if event is None:
            if self._nursery is None:
                return
            event = trio.Event()
            self._requests[band] = event
            self._nursery.start_soon(self._request, band, event, asked)
        with trio.move_on_after(REQUEST_WAIT_S):
            await event.wait()
        self._note_asker(band, asked)  # another file of the band, opened meanwhile

    def _note_asker(self, band: BandId, asked: RestoreAsker, person_only: bool = False) -> None:
        """Add `asked` to the askers of `band`'s restore while it is restoring (a short
        write, and only for a file not recorded yet: one read per open otherwise).
        `person_only`: not if the process is one of no_restore_processes (a thumbnailer
        asked for nothing)."""
        info = self.vault.catalog.band(band)
        if info is None or info.state != "restoring" or info.restore is None:
            return
        if person_only and self.policy.matcher.match(asked.pid) is not None:
            return
        known = current_askers(self.vault.catalog, info)
        if known is not None and any(a.file == asked.file for a in known.askers):
            return
        with self.vault.catalog.writer() as w:
            w.add_restore_asker(band, info.restore.expected_ns, asked)

    def _request_and_record(self, band: BandId, asked: RestoreAsker) -> tuple[str, BandInfo | None]:
        """Blocking: the request (`OnDemandRestores.request`), and its first asker recorded."""
        outcome, new = self.policy.request(band)
        if new is not None and new.restore is not None:
            with self.vault.catalog.writer() as w:
                w.add_restore_asker(band, new.restore.expected_ns, asked)
        return outcome, new

    async def _request(self, band: BandId, event: trio.Event, asked: RestoreAsker) -> None:
        try:
            outcome, new = await trio.to_thread.run_sync(
                self._request_and_record, band, asked, limiter=self.limiter
            )
            log.info("restore of band %s on open: %s; asked by %s", band, outcome, describe(asked))
            if new is not None and self.settings.on_restore_requested and self._nursery is not None:
                self._nursery.start_soon(self._hook, "requested", new, [asked])
        except VaultError as e:
            log.error("restore of band %s on open failed: %s", band, e.message)
        except Exception:
            log.exception("restore of band %s on open failed", band)
        finally:
            self._requests.pop(band, None)
            event.set()

    # ---- the watcher -----------------------------------------------------------------------

    async def _on_signals(self, signals: AsyncIterator[int]) -> None:
        async for _ in signals:
            log.info("%s: polling restores now", POLL_SIGNAL.name)
            self.signals += 1
            self._wake.set()

    async def _watch(self) -> None:
        while True:
            await self.poll()
            with trio.move_on_after(self.settings.poll_interval):
                await self._wake.wait()
            self._wake = trio.Event()

    async def poll(self) -> None:
        """One round: refresh bands in flight, fetch restored ones, run the hooks."""
        seen = self.signals
        try:
            result = await trio.to_thread.run_sync(poll_restores, self.vault, limiter=self.limiter)
            for band in result.changed:
                self.view.readers.invalidate(band.band)
            if self.settings.fetch_restored:
                for band in result.to_fetch:
                    await self._fetch(band)
            if self.settings.on_restore_ready and self._nursery is not None:
                for band in result.ready:
                    record = current_askers(self.vault.catalog, band)
                    self._nursery.start_soon(self._hook, "ready", band, record.askers if record else [])
        except VaultError as e:
            log.error("restore watcher: %s (next poll as usual)", e.message)
        except Exception:
            log.exception("restore watcher: poll failed (next poll as usual)")
        finally:
            self.polls += 1
            self.last_poll_ns = time.time_ns()
            self.answered = seen

    async def _fetch(self, band: BandInfo) -> None:
        evicted = self.cache.make_room(band.size, self.view.in_use, self.view.last_used)
        if evicted is None:
            log.info(
                "cache: no room for band %s (%d bytes, cache_size %d; bands being read stay): "
                "read from S3 while restored",
                band.band,
                band.size,
                self.cache.limit,
            )
            return
        for old in evicted:
            self.view.readers.invalidate(old.band)
        try:
            await trio.to_thread.run_sync(fetch_band, self.vault, band, limiter=self.limiter)
        except VaultError as e:
            log.error("cache: fetching band %s failed: %s", band.band, e.message)
            return
        self.view.readers.invalidate(band.band)
        log.info("cache: band %s fetched (%d bytes)", band.band, band.size)

    async def _hook(self, event: str, band: BandInfo, askers: Sequence[RestoreAsker]) -> None:
        """``[mount].on_restore_<event> … BAND``, no shell, with `hook_env` (docs/mount.md)."""
        name = f"on_restore_{event}"
        command = getattr(self.settings, name)
        try:
            argv = [*shlex.split(command), band.band]
            env = {**os.environ, **hook_env(event, band, askers)}
            proc = await trio.run_process(
                argv, stdin=subprocess.DEVNULL, capture_stderr=True, check=False, env=env
            )
        except (OSError, ValueError) as e:
            log.error("%s %r for band %s could not run: %s", name, command, band.band, e)
            return
        said = proc.stderr.decode(errors="replace").strip()[-500:] if proc.returncode else ""
        log.info("%s for band %s exited %d%s", name, band.band, proc.returncode, f": {said}" if said else "")

    def status_lines(self) -> list[str]:
        last = (
            time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.last_poll_ns / 1e9))
            if self.last_poll_ns
            else "never"
        )
        cached = self.cache.cached()
        return [
            "",
            f"restore watcher: every {self.settings.poll_interval:g} s, {self.polls} poll(s), "
            f"last at {last}; SIGUSR1: {self.signals} received, {self.answered} answered "
            f"(`kill -USR1 {os.getpid()}` polls now)",
            self.policy.budget_line(),
            f"cache: {len(cached)} band(s), {sum(b.size for b in cached)} of "
            f"{self.settings.cache_size} bytes; fetch_restored "
            f"{'on' if self.settings.fetch_restored else 'off'}",
        ]
