"""``vaultfs scrub``: re-read cold collections' files against their latest version
(argparse wiring and output only; the work is `vaultfs.check.scrub`)."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from vaultfs.errors import EXIT_BITROT, EXIT_OK, ConfigError, UsageError
from vaultfs.output import AddCommand, display_path, emit_json, human_bytes

if TYPE_CHECKING:  # imported when a command runs (startup time)
    from vaultfs.check.scrub import ScrubReport
    from vaultfs.config import CollectionConfig, Config
    from vaultfs.vault import Vault

LIST_LIMIT = 20  # changed or missing files named before "… and N more"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], add: AddCommand) -> None:
    """Add ``scrub``; `add(name, help, description)` makes a parser with --json."""
    sp = add(
        "scrub",
        "re-read cold collections' files to find bit rot",
        "Re-read and hash the files of the latest version of cold collections (default:\n"
        "every cold collection), least recently verified first, and compare them with the\n"
        "version. A snapshot does not read files whose size and times did not change, so\n"
        "bytes that rot on disk are found only by reading them: run this nightly (cron, a\n"
        "systemd timer). Each match is recorded; [collections.NAME].scrub_days (default 30)\n"
        "is how often every file should be verified, and without --max-bytes/--max-time a\n"
        "run reads what covers the collections in that time (their bytes / scrub_days, at\n"
        "least 1 GiB). Files are read in order until the next one does not fit in\n"
        "--max-bytes (the first is always read) or --max-time has passed. Budgets count\n"
        "bytes read: a sparse file its data, not its holes (those are checked unread).\n\n"
        "Bit rot (same size and mtime as the version, different bytes) is reported with the\n"
        "version and band holding the good copy, the `vaultfs restore fetch` line that gets\n"
        "it back, and the restore cost if that band is archived. A file changed since the\n"
        "version is not rot: the next snapshot takes it. Takes no vault lock (it reads only\n"
        "the local files and commits what it verified in short batches).\n\n"
        "--status: per collection, the files and bytes verified within scrub_days (coverage),\n"
        "the oldest verification, bit rot found and not repaired, and the nightly budget.\n\n"
        "Exit status: 0 every file read matched (or changed since the version); 4 bit rot\n"
        "found (with --status: bit rot not repaired yet); 3 files could not be read (an\n"
        "I/O error); 1 a collection's root was refused (missing or empty: is the volume\n"
        "mounted?); 2 a warm or unknown collection was named.",
    )
    sp.add_argument("collections", nargs="*", metavar="COLLECTION", help="cold collections (default: all)")
    sp.add_argument(
        "--max-bytes", type=_size, metavar="SIZE", help='stop before reading more than this, e.g. "10GiB"'
    )
    sp.add_argument("--max-time", type=_duration, metavar="DURATION", help='stop after this long, e.g. "30m"')
    sp.add_argument("--status", action="store_true", help="show coverage instead of scrubbing")
    sp.set_defaults(func=cmd_scrub)


def _size(text: str) -> int:
    from vaultfs.config import parse_size

    try:
        return parse_size(text, "--max-bytes")
    except ConfigError as e:
        raise argparse.ArgumentTypeError(e.message) from None


def _duration(text: str) -> float:
    from vaultfs.config import parse_duration

    try:
        return parse_duration(text, "--max-time")
    except ConfigError as e:
        raise argparse.ArgumentTypeError(e.message) from None


def cold_collections(config: Config, names: list[str]) -> list[CollectionConfig]:
    """The named collections (default: every cold one); a warm one named is an error."""
    if not names:
        return [c for c in config.collections if c.tier == "cold"]
    chosen = [config.collection(n) for n in dict.fromkeys(names)]  # one named twice: read once
    for c in chosen:
        if c.tier != "cold":
            raise UsageError(
                f"collection {c.name} is warm: scrub covers cold collections (warm files change "
                f"and snapshots re-read them); `vaultfs check --source {c.name}` re-hashes it once"
            )
    return chosen


def cmd_scrub(args: argparse.Namespace, config: Config) -> int:
    from vaultfs.check import scrub
    from vaultfs.progress import TerminalProgress
    from vaultfs.vault import Vault

    collections = cold_collections(config, args.collections)
    if args.status:
        if args.max_bytes is not None or args.max_time is not None:
            raise UsageError("--status reads nothing: drop --max-bytes/--max-time, or drop --status to scrub")
        return _status(config, collections, args)
    vault = Vault.open(config)
    try:
        with TerminalProgress("scrub", enabled=None if not args.quiet else False) as prog:
            report = scrub.scrub(
                vault, collections, max_bytes=args.max_bytes, max_seconds=args.max_time, progress=prog
            )
    finally:
        vault.close()
    code = report.exit_code
    if args.json:
        emit_json({**report.to_json(), "exit_code": code})
        return code
    for message in report.refused:
        print(f"vaultfs: error: {message}", file=sys.stderr)
    print_report(report, quiet=args.quiet)
    return code


def print_report(report: ScrubReport, *, quiet: bool, label: str = "scrub") -> None:
    """Bit rot and unreadable files on stderr with what to do; changes as notes; a summary."""
    for r in report.rot:
        _print_rot(r)
    from vaultfs.check.scrub import fetch_command

    for c, p, why in report.unreadable:
        print(
            f"WARNING: {c}/{display_path(p)} {why}: check the disk; "
            f"`{fetch_command(c, report.versions[c], p)}` gets the version's copy",
            file=sys.stderr,
        )
    if quiet:
        return
    for what, rows in (
        ("changed since the version; the next snapshot takes it", [(c, p, w) for c, p, w in report.changed]),
        ("is missing; the next snapshot records it as deleted", [(c, p, "") for c, p in report.missing]),
    ):
        for c, p, why in rows[:LIST_LIMIT]:
            print(f"note: {c}/{display_path(p)} {what}" + (f" ({why})" if why else ""))
        if len(rows) > LIST_LIMIT:
            print(f"note: … and {len(rows) - LIST_LIMIT} more (--json lists all)")
    for n in report.notes:
        print(f"note: {n}")
    print(_summary(report, label))


def _print_rot(r: Any) -> None:
    print(
        f"BIT ROT: {r.collection}/{display_path(r.path)} has the size and mtime of "
        f"{r.target} but different bytes (the disk changed them, not a program)",
        file=sys.stderr,
    )
    if r.band is None:
        print(f"  no good copy: {r.lost}", file=sys.stderr)
        return
    state = f"{r.band_state}, {r.storage_class}" if r.storage_class else r.band_state
    print(f"  good copy: {r.target}, band {r.band} ({state})", file=sys.stderr)
    if r.start_command is not None:
        cost = (
            f" (~${r.restore_cost_usd:.2f}, ready within {r.restore_hours} h; "
            "`vaultfs restore plan` shows both tiers)"
            if r.restore_cost_usd is not None
            else " (already restoring)"
        )
        print(f"  the band is archived: first {r.start_command}{cost}", file=sys.stderr)
    print(f"  get it back: {r.fetch_command}", file=sys.stderr)
    print(
        "  then check the disk (SMART, a filesystem scrub) and copy the file back in place",
        file=sys.stderr,
    )


def _summary(report: ScrubReport, label: str) -> str:
    verdict = f"{len(report.rot)} file(s) with bit rot" if report.rot else "no bit rot"
    stopped = "; stopped at --max-time" if report.out_of_time else ""
    return (
        f"{label}: re-read and hashed {report.verified_files + len(report.rot)} of "
        f"{report.planned_files} file(s) planned ({human_bytes(report.read_bytes)} read of a "
        f"{human_bytes(report.budget_bytes)} budget): {verdict}{stopped}"
    )


def _status(config: Config, collections: list[CollectionConfig], args: argparse.Namespace) -> int:
    from vaultfs.check import scrub
    from vaultfs.vault import Vault

    vault = Vault.open(config, readonly=True)
    try:
        found = [scrub.coverage(vault, c) for c in collections]
    finally:
        vault.close()
    states = [s for s in found if s is not None]
    code = EXIT_BITROT if any(s.rot for s in states) else EXIT_OK
    if args.json:
        emit_json({"collections": [s.to_json() for s in states], "exit_code": code})
        return code
    for coll, s in zip(collections, found, strict=True):
        lines = s.describe() if s is not None else [f"{coll.name}: no versions yet"]
        print("\n".join(lines))
    return code


def after_snapshot(vault: Vault, collection: CollectionConfig) -> ScrubReport | None:
    """A snapshot's slice of scrubbing (``scrub_per_snapshot``) of a cold collection just
    snapshotted; None when it has none. The caller holds the vault lock."""
    if collection.tier != "cold" or not collection.scrub_per_snapshot:
        return None
    from vaultfs.check import scrub

    return scrub.scrub(vault, [collection], share=collection.scrub_per_snapshot)
