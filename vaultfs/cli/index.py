"""``vaultfs index rebuild`` and ``vaultfs check`` (argparse wiring and output only)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

from vaultfs.errors import EXIT_ERROR, EXIT_OK, EXIT_WARNINGS, CorruptionError, VaultError
from vaultfs.output import AddCommand, add_output_options, human_bytes

if TYPE_CHECKING:  # imported when a command runs (startup time)
    from vaultfs.check.report import CheckReport
    from vaultfs.config import Config
    from vaultfs.index import RebuildReport

RUNG_NAMES = {
    "lmdb": "rung 1 (local catalog)",
    "index": "rung 2 (consolidated index)",
    "sidecars": "rung 3 (sidecars and version records)",
    "tails": "rung 4 (catalogs at the end of the bands)",
    "scan": "rung 5 (full band scan)",
}


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], add: AddCommand) -> None:
    """Add this module's subcommands; `add(name, help, description)` makes a parser with --json."""
    ip = add(
        "index",
        "rebuild the local index from the store",
        "Maintain the local index (LMDB in the state directory).",
    )
    isub = ip.add_subparsers(dest="index_command", metavar="ACTION")
    isub.required = True
    rp = isub.add_parser(
        "rebuild",
        help="rebuild the local index from the store (the rebuild ladder, docs/recovery.md)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Rebuild the local index. Without --from, walk the ladder and use the first rung\n"
            "that verifies: 1 the local catalog itself, 2 the consolidated index objects\n"
            "(index/), 3 band sidecars and version records, 4 the catalog at the end of each\n"
            "band (ranged reads), 5 a full read of every band. Archived bands needed by rungs\n"
            "4-5 must be restored first: the plan is shown and confirmed (or --yes).\n"
            "Works into an empty state directory: a new machine gets the whole vault back.\n"
            "Afterwards damaged version records and sidecars are rewritten from verified\n"
            "copies and the consolidated index is brought up to date."
        ),
    )
    rp.add_argument(
        "--from",
        dest="rung",
        choices=["index", "sidecars", "tails", "scan"],
        help="start at this rung instead of verifying the ones above",
    )
    rp.add_argument(
        "--yes", action="store_true", help="restore archived bands when a rung needs them, without asking"
    )
    add_output_options(rp)
    rp.set_defaults(func=cmd_index_rebuild)

    cp = add(
        "check",
        "verify the vault's integrity",
        "Check the local index against itself and the store: every band and sidecar the\n"
        "index names exists and agrees, every version's trees and blobs are there, version\n"
        "records and the consolidated index match. --read-data also reads every readable\n"
        "band and verifies every SHA-256; archived bands are listed with the restore that\n"
        "reading them needs. --source COLLECTION re-hashes the local files against the\n"
        "latest version and reports bit rot (same size and mtime, different bytes); it\n"
        "walks the source with the collection's exclusion rules, as a snapshot does.\n"
        "Files whose bytes are lost are listed per version. A band found missing, or blobs\n"
        "of a damaged band, are recorded as lost (under the vault lock, briefly) so that\n"
        "the next snapshot stores them again from the sources.\n\n"
        "Exit status: 0 clean; 1 problems found (listed, with what they affect);\n"
        "3 clean, but archived bands could not be read.",
    )
    cp.add_argument("--read-data", action="store_true", help="read and verify every band")
    cp.add_argument("--source", metavar="COLLECTION", help="re-hash the collection's files")
    cp.set_defaults(func=cmd_check)


def cmd_index_rebuild(args: argparse.Namespace, config: Config) -> int:
    from vaultfs.index import rebuild
    from vaultfs.store import open_store

    store = open_store(config.store, config.s3, config.upload_limit, config.download_limit)
    store.check_access()

    def confirm(plan: list[str]) -> bool:
        print("\n".join(plan), file=sys.stderr)
        if args.yes:
            return True
        if not sys.stdin.isatty():
            print("not restoring: pass --yes to restore these bands", file=sys.stderr)
            return False
        return input("restore them now? [y/N] ").strip().lower() in ("y", "yes")

    report = rebuild(config, store, start=args.rung, confirm=confirm)
    # Files whose bytes are gone (or a damaged band's sidecar that cannot be rewritten) are
    # a warning, not a failure: every version is there, the lost files are listed, and
    # snapshots heal what the sources still have.
    code = EXIT_ERROR if report.problems else EXIT_WARNINGS if report.lost or report.warnings else EXIT_OK
    if getattr(args, "json", False):
        _emit({**report.to_json(), "exit_code": code})
        return code
    _print_rebuild(report, quiet=args.quiet)
    return code


def _print_rebuild(report: RebuildReport, *, quiet: bool) -> None:
    """The rebuild report for people: what happened on stdout, problems, warnings and lost
    files on stderr, and a summary line unless `quiet`."""
    for line in report.why:
        print(line)
    for line in report.notes:
        print(f"note: {line}")
    for line in report.repairs:
        print(f"repaired: {line}")
    for line in report.problems:
        print(f"problem: {line}", file=sys.stderr)
    for line in report.warnings:
        print(f"warning: {line}", file=sys.stderr)
    for version, paths in sorted(report.lost_files.items()):
        for path in paths:
            print(f"lost: {version}: {path}", file=sys.stderr)
    if not quiet:
        what = "verified" if report.rung == "lmdb" else "rebuilt"
        lost = sum(len(p) for p in report.lost_files.values())
        print(
            f"local index {what} using {RUNG_NAMES[report.rung]}: "
            f"{len(report.versions)} version(s)"
            + (
                f"; {lost} file(s) in them lost ({len(report.lost)} blob(s) whose bytes are "
                "gone: `vaultfs versions` lists them; a snapshot stores again what the "
                "sources still have)"
                if report.lost
                else ""
            )
            + (
                f"; {len(report.problems)} problem(s) remain (the `problem:` lines)"
                if report.problems
                else ""
            )
        )


def cmd_check(args: argparse.Namespace, config: Config) -> int:
    from vaultfs.check import check, record
    from vaultfs.vault import Vault

    source = config.collection(args.source) if args.source else None
    try:
        vault = Vault.open(config, readonly=True)
    except VaultError as e:
        if "local catalog" not in e.message or "index rebuild" in e.message:
            raise
        raise CorruptionError(
            f"{e.message}; the store still holds everything: run `vaultfs index rebuild`"
        ) from None
    try:
        report = check(vault, read_data=args.read_data, source=source)
    finally:
        vault.close()
    note = record(config, report)  # what was found lost, so the next snapshot heals it
    if note:
        report.notes.append(note)
    code = EXIT_ERROR if report.problems else EXIT_WARNINGS if report.not_read else EXIT_OK
    if args.json:
        _emit({**report.to_json(), "exit_code": code})
        return code
    _print_findings(report)
    for n in report.notes:
        print(f"note: {n}", file=sys.stderr)
    sr = report.source
    if sr is not None and not args.quiet:
        print(
            f"source {sr.collection} against v{sr.version}: {sr.files} files, {sr.hashed} "
            f"re-hashed; {len(sr.bitrot)} bit rot suspected, {len(sr.modified)} modified, "
            f"{len(sr.added)} added, {len(sr.deleted)} deleted"
        )
    if not args.quiet:
        c = report.checked
        parts = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in sorted(c.items()))
        verdict = "clean" if report.ok else f"{len(report.problems)} problem(s)"
        print(f"check: {verdict} ({parts})")
    return code


def _print_findings(report: CheckReport) -> None:
    """Problems, with what they affect and what to do; archived bands not read, with how to
    restore them and what restoring them all for a read would cost."""
    for p in report.problems:
        print(f"PROBLEM: {p.what}", file=sys.stderr)
        if p.affects:
            print(f"  affects: {', '.join(p.affects[:20])}", file=sys.stderr)
        if p.advice:
            print(f"  to do: {p.advice}", file=sys.stderr)
    for nr in report.not_read:
        print(f"NOT READ: band {nr['band']} is archived {nr['plan']}", file=sys.stderr)
    cost = report.not_read_cost
    if cost:
        print(
            f"reading the {cost['bands']} archived band(s) ({human_bytes(cost['bytes'])}) takes "
            f"restores: ~${cost['cost_usd']['Bulk']:.2f} Bulk, ~${cost['cost_usd']['Standard']:.2f} "
            f"Standard (incl. {cost['restore_days']} days of the restored copies; prices: "
            f"{cost['prices_taken']}, [prices] in the config)",
            file=sys.stderr,
        )


def _emit(doc: dict[str, Any]) -> None:
    json.dump(doc, sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")
