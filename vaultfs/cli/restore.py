"""``vaultfs restore plan|start|status|fetch``: getting data back, from Deep Archive too."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vaultfs.cli.limits import add_limit_options
from vaultfs.errors import EXIT_OK, EXIT_WARNINGS, ConfigError, VaultError
from vaultfs.output import AddCommand, add_subcommand, emit_json, human_bytes, iso_utc, parse_target

TIERS = ("Bulk", "Standard")

if TYPE_CHECKING:  # imported when a command runs (startup time)
    from vaultfs.archive import Plan
    from vaultfs.config import Config


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], add: AddCommand) -> None:
    """Add ``restore plan|start|status|fetch``. Long on purpose: it is the subcommands'
    --help text and options, declared in order, with no logic to split."""
    rp = sub.add_parser(
        "restore",
        help="get files back from a version (from Deep Archive too)",
        description=(
            "Get files back. Bands of cold collections live in Glacier Deep Archive and must\n"
            "be restored (12-48 h, billed) before they can be read:\n\n"
            "  vaultfs restore plan photos@v3 2019/     what it takes: bands, bytes, cost, time\n"
            "  vaultfs restore start photos@v3 2019/    ask S3 for the restores (idempotent)\n"
            "  vaultfs restore status                   every restore in flight\n"
            "  vaultfs restore fetch photos@v3 2019/ --to DIR [--wait]"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    rsub = rp.add_subparsers(dest="restore_command", metavar="ACTION")
    rsub.required = True

    def action(name: str, help_text: str, description: str) -> argparse.ArgumentParser:
        return add_subcommand(rsub, name, help_text, description)

    def target(ap: argparse.ArgumentParser) -> None:
        ap.add_argument("what", metavar="COLLECTION[@vN]", help="default version: the latest")
        # default=[]: without it argparse calls an empty nargs="*" positional required
        ap.add_argument("paths", nargs="*", default=[], metavar="PATH", help="paths inside the collection")

    ap = action(
        "plan",
        "what restoring a version (or paths in it) takes",
        "List the bands the chosen version needs (only those), their bytes, the number\n"
        "of requests, the estimated cost and ready-by time for Bulk and Standard, and\n"
        "which bands are already readable (free). Prices: [prices] in the config.",
    )
    target(ap)
    ap.set_defaults(func=cmd_plan)

    ap = action(
        "start",
        "request the restores a version needs",
        "Ask S3 to restore every archived band the chosen version needs. Bands already\n"
        "restoring are not asked again; a restored band about to expire is extended.",
    )
    target(ap)
    ap.add_argument("--tier", choices=TIERS, help="default: [s3].restore_tier")
    ap.add_argument("--days", type=int, help="how long the restored copy stays (default: [s3].restore_days)")
    ap.set_defaults(func=cmd_start)

    ap = action(
        "status",
        "every restore in flight",
        "Every band being restored or restored: requested when, tier, expected ready,\n"
        "ready at, expires at, fetched to the local cache; and totals. Under each band,\n"
        "the files whose opens through `vaultfs mount` asked for its restore, with the\n"
        "process (name, pid, uid) and when (`asked_by` in --json).",
    )
    ap.add_argument("--watch", action="store_true", help="refresh until every restore is ready")
    ap.add_argument(
        "--interval",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="seconds between checks with --watch (default 60)",
    )
    ap.set_defaults(func=cmd_status)

    ap = action(
        "fetch",
        "write files of a version into a directory",
        "Write COLLECTION[@vN] (default: the latest version), or only the given PATHs\n"
        "inside it, under DIR with their metadata. Every file is checked against its\n"
        "SHA-256; nothing is ever written outside DIR. Archived bands must be restored\n"
        "first (`vaultfs restore start`); --wait polls until they are ready.\n"
        "A file whose content is missing or damaged is skipped and listed, everything\n"
        "else is restored, and the exit status is 3. Restoring a whole version gives\n"
        "DIR the collection root's mode, owner and times; restoring PATHs leaves DIR as is.\n"
        "A file already in DIR with the recorded content is kept (its SHA-256 is checked;\n"
        "its metadata is set as recorded), and so are a directory, symlink, FIFO or device\n"
        "node as recorded; if anything else is in the way, nothing is written and the\n"
        "error names it, unless --overwrite (a directory in the way is never replaced).\n"
        "+i and +a are set only when the whole fetch completed.",
    )
    target(ap)
    ap.add_argument("--to", required=True, metavar="DIR", help="target directory")
    ap.add_argument(
        "--overwrite",
        action="store_true",
        help="replace files in DIR whose content differs from the version's",
    )
    ap.add_argument("--wait", action="store_true", help="wait until restoring bands are ready")
    ap.add_argument(
        "--interval",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="seconds between checks with --wait (default 300)",
    )
    add_limit_options(ap)
    ap.set_defaults(func=cmd_fetch, via_hub=True)


def _open(config: Config, readonly: bool = False, quick: bool = False) -> Any:
    from vaultfs.vault import Vault

    return Vault.open(config, readonly=readonly, quick=quick)


def _selection(vault: Any, args: argparse.Namespace) -> tuple[Any, list[tuple[bytes, ...]]]:
    from vaultfs.extract import parse_selection

    collection, number = parse_target(args.what)
    vault.check_collection(collection)
    return vault.resolve_version(collection, number), parse_selection(args.paths)


def band_status_json(b: Any) -> dict[str, Any]:
    from vaultfs.archive import band_status_json as status  # lazily: start-up time

    return status(b)


def cmd_plan(args: argparse.Namespace, config: Config) -> int:
    from vaultfs import archive
    from vaultfs.extract import bands_needed

    vault = _open(config)
    try:
        version, selection = _selection(vault, args)
        needed = bands_needed(vault, version.root, selection)
        for band_id in needed:
            band = vault.catalog.band(band_id)
            if band is not None and band.state in ("restoring", "restored"):
                archive.refresh(vault, band)
        plan = archive.plan(vault, needed)
    finally:
        vault.close()
    prices, days = config.prices, config.s3.restore_days
    tiers = {
        tier: {
            "cost_usd": round(plan.cost(prices, tier, days), 4),
            "ready_by": iso_utc(time.time_ns() + prices.hours(tier) * 3600 * 10**9)
            if plan.to_restore
            else None,
            "hours": prices.hours(tier),
        }
        for tier in TIERS
    }
    doc = {
        "collection": version.collection,
        "version": version.number,
        "bands_needed": len(needed),
        "bytes_needed": sum(needed.values()),
        "to_restore": [band_status_json(b) for b in plan.to_restore],
        "restoring": [band_status_json(b) for b in plan.in_flight],
        "readable": [band_status_json(b) for b in plan.free],
        "restore_bytes": plan.restore_bytes,
        "requests": len(plan.to_restore),
        "tiers": tiers,
        "restore_days": days,
        "prices_taken": prices.taken,
    }
    if args.json:
        emit_json(doc)
    else:
        _print_plan(doc, plan, args)
    return EXIT_OK


def _print_plan(doc: dict[str, Any], plan: Plan, args: argparse.Namespace) -> None:
    """The plan for a person: what is readable, what must be restored, each tier's price."""
    print(
        f"{doc['collection']}@v{doc['version']}: {doc['bands_needed']} band(s) hold the "
        f"{human_bytes(doc['bytes_needed'])} of content asked for"
    )
    print(f"  readable now (free): {len(plan.free)} band(s)")
    if plan.in_flight:
        print(f"  already restoring:   {len(plan.in_flight)} band(s)")
    if not plan.to_restore:
        print("nothing to restore: `vaultfs restore fetch` can run now")
        return
    print(
        f"  to restore:          {len(plan.to_restore)} band(s), "
        f"{human_bytes(plan.restore_bytes)}, {len(plan.to_restore)} request(s)"
    )
    for tier in TIERS:
        t = doc["tiers"][tier]
        print(
            f"  {tier:<8} ~${t['cost_usd']:.2f} (incl. {doc['restore_days']} days of the restored copy), "
            f"ready within {t['hours']} h, by {t['ready_by']}"
        )
    print(f"prices: {doc['prices_taken']} ([prices] in the config)")
    print(f"next: vaultfs restore start {_shell_words(args.what, args.paths)}")


def cmd_start(args: argparse.Namespace, config: Config) -> int:
    from vaultfs import archive
    from vaultfs.extract import bands_needed
    from vaultfs.model import readable_now

    tier = args.tier or config.s3.restore_tier
    days = args.days if args.days is not None else config.s3.restore_days
    if days < 1:
        raise ConfigError("--days must be at least 1")
    vault = _open(config)
    try:
        version, selection = _selection(vault, args)
        needed = bands_needed(vault, version.root, selection)
        bands = [b for b in (vault.catalog.band(i) for i in needed) if b is not None]
        bands = [archive.refresh(vault, b) for b in bands]
        requested = archive.request_restores(vault, bands, tier, days)
        states = [vault.catalog.band(b.band) for b in bands]
    finally:
        vault.close()
    doc = {
        "requested": [band_status_json(b) for b in requested],
        "bands": [band_status_json(b) for b in states if b is not None],
        "tier": tier,
        "days": days,
    }
    if args.json:
        emit_json(doc)
    elif not args.quiet:
        pending = sum(1 for b in states if b is not None and b.state == "restoring")
        print(
            f"requested {len(requested)} restore(s) ({tier}, {days} days); "
            f"{pending} band(s) restoring, "
            f"{sum(1 for b in states if b is not None and readable_now(b))} readable"
        )
    return EXIT_OK


def cmd_status(args: argparse.Namespace, config: Config) -> int:
    from vaultfs import archive
    from vaultfs.mount.askers import askers_json, current_askers

    while True:
        vault = _open(config)
        try:
            bands = [archive.refresh(vault, b) for b in archive.in_flight(vault)]
            cached = [b for b in vault.catalog.bands() if b.state == "cached"]
            bands = [b for b in bands if b.state in ("restoring", "restored")] + cached
            askers = {b.band: current_askers(vault.catalog, b) for b in bands}
        finally:
            vault.close()
        pending = [b for b in bands if b.state == "restoring"]
        if not args.watch or not pending:
            break
        if not args.quiet:  # stderr: a --json reader of stdout is not disturbed
            print(
                f"{len(pending)} band(s) still restoring; next check in {args.interval:g}s",
                file=sys.stderr,
                flush=True,
            )
        time.sleep(args.interval)
    cost = sum(
        config.prices.restore_cost(b.size, 1, b.restore.tier, b.restore.days) for b in bands if b.restore
    )
    bytes_pending = sum(b.size for b in pending)
    bytes_ready = sum(b.size for b in bands if b.state != "restoring")
    doc = {
        "bands": [{**band_status_json(b), **askers_json(askers[b.band])} for b in bands],
        "bytes_pending": bytes_pending,
        "bytes_ready": bytes_ready,
        "estimated_cost_usd": round(cost, 4),
    }
    if args.json:
        emit_json(doc)
        return EXIT_OK
    if not bands:
        print("no restores in flight")
        return EXIT_OK
    print(
        f"{'BAND':<28} {'SIZE':>10}  {'STATE':<9} {'TIER':<8} {'REQUESTED':<20} "
        f"{'EXPECTED BY':<20} {'READY AT':<20} {'EXPIRES':<20} CACHED"
    )
    for b in bands:
        r = b.restore
        print(
            f"{b.band:<28} {human_bytes(b.size):>10}  {b.state:<9} {(r.tier if r else '-'):<8} "
            f"{_t(r.requested_ns if r else 0):<20} {_t(r.expected_ns if r else 0):<20} "
            f"{_t(r.ready_ns if r else 0):<20} {_t(r.expires_ns if r else 0):<20} "
            f"{'yes' if b.cached else 'no'}"
        )
    print(
        f"pending {human_bytes(bytes_pending)}, ready {human_bytes(bytes_ready)}, "
        f"estimated cost so far ${cost:.2f}"
    )
    _print_askers(bands, askers)
    return EXIT_OK


def _print_askers(bands: list[Any], askers: dict[Any, Any]) -> None:
    """Each band's restore with the files whose opens through the mount asked for it."""
    from vaultfs.mount.askers import asker_lines
    from vaultfs.mount.status import state_text

    asked = [b for b in bands if askers[b.band] is not None]
    if not asked:
        return
    print("\nasked for through the mount:")
    for b in asked:
        print(f"  {b.band}: {state_text(b)}")
        for line in asker_lines(askers[b.band]):
            print(line)


def cmd_fetch(args: argparse.Namespace, config: Config) -> int:
    from vaultfs.cli import limits
    from vaultfs.extract import bands_needed, fetch
    from vaultfs.model import readable_now
    from vaultfs.progress import TerminalProgress

    if config.hub is not None:  # a hub's client: its versions are on the hub
        from vaultfs.cli import hub as cli_hub

        return cli_hub.fetch(args, config)
    collection, _ = parse_target(args.what)
    vault = _open(config, quick=True)  # one file back without importing boto3
    try:
        version, selection = _selection(vault, args)
        needed = bands_needed(vault, version.root, selection, skip_unknown=True)
        while True:
            bands = [b for b in (vault.catalog.band(i) for i in needed) if b is not None]
            stale = [b for b in bands if not readable_now(b)]
            if stale:  # archived bands only: warm data's fetch does without vaultfs.archive
                from vaultfs import archive

                stale = [archive.refresh(vault, b) for b in stale]
            blocked = [b for b in stale if not readable_now(b)]
            if not blocked:
                break
            unasked = [b for b in blocked if b.state != "restoring"]
            if unasked or not args.wait:
                what = f"{collection}@v{version.number}"
                asked = _shell_words(what, args.paths)  # the same PATHs: restore no more than asked
                raise VaultError(
                    f"{len(blocked)} band(s) ({human_bytes(sum(b.size for b in blocked))}) of {what} "
                    + (
                        f"are archived: run `vaultfs restore start {asked}` first "
                        f"(`vaultfs restore plan {asked}` shows the cost)"
                        if unasked
                        else "are still restoring: add --wait, or see `vaultfs restore status`"
                    )
                )
            if not args.quiet:
                ready_by = max((b.restore.expected_ns for b in blocked if b.restore), default=0)
                print(
                    f"waiting for {len(blocked)} band(s) to be restored (expected by "
                    f"{_t(ready_by)}); next check in {args.interval:g}s",
                    file=sys.stderr,
                    flush=True,
                )
            time.sleep(args.interval)
        enabled = None if not args.quiet else False
        with TerminalProgress(f"restore {args.what}", enabled=enabled, note=limits.note(config)) as prog:
            try:
                to, number = Path(args.to), version.number
                result = fetch(vault, collection, number, args.paths, to, prog, overwrite=args.overwrite)
            except OSError as e:  # the target's own errors: a full disk, a read-only mount, ...
                raise _target_failed(args, e) from None
    finally:
        vault.close()
    return report_fetch(args, collection, result)


def report_fetch(args: argparse.Namespace, collection: str, result: Any) -> int:
    """What a fetch left out and did (stderr, then the summary or --json); its exit status."""
    for p in result.problems:
        print(f"warning: {p.display()}", file=sys.stderr)
    for p in result.missing:
        print(f"not restored: {p.display()}", file=sys.stderr)
    for kind, count in result.not_restored.items():
        print(f"warning: metadata not restored: {count} {kind}", file=sys.stderr)
    code = EXIT_WARNINGS if result.problems or result.missing or result.not_restored else EXIT_OK
    if args.json:
        emit_json(_fetch_json(collection, args.to, result, code))
    elif not args.quiet:
        print(_fetch_summary(f"{collection}@v{result.version.number}", args.to, result))
    return code


def _target_failed(args: argparse.Namespace, e: OSError) -> VaultError:
    """A write into the target failed: one line, and the way on (a re-run keeps what is done)."""
    where = f" ({os.fsdecode(e.filename)})" if e.filename is not None else ""
    return VaultError(
        f"cannot write into {args.to}: {e.strerror or e}{where}; the files restored so far are "
        "complete: fix that (free space?) and run the same command again (files already "
        "restored with the recorded content are kept, not written again)"
    )


def _fetch_json(collection: str, to: str, result: Any, code: int) -> dict[str, Any]:
    from vaultfs.model import to_text

    return {
        "collection": collection,
        "version": result.version.number,
        "to": to,
        "files": result.files,
        "bytes": result.bytes,
        "dirs": result.dirs,
        "others": result.others,
        "problems": [{"path": to_text(p.path), "reason": p.reason} for p in result.problems],
        "missing": [{"path": to_text(p.path), "reason": p.reason} for p in result.missing],
        "not_restored": result.not_restored,
        "root_metadata_applied": result.root_meta_applied,
        "already_present": result.present,
        "exit_code": code,
    }


def _fetch_summary(what: str, to: str, result: Any) -> str:
    """The last line of ``restore fetch``: what was restored and verified, and what was not."""
    done = (
        f"{result.files} files ({human_bytes(result.bytes)}), {result.dirs} directories, "
        f"{result.others} other entries into {to}"
        + (f" ({result.present} files were there already, the same, and kept)" if result.present else "")
    )
    if not result.missing:
        return f"restored {what}: {done}; every file's SHA-256 verified"
    return (
        f"restored {what} in part: {done}, each of those files' SHA-256 verified; "
        f"{len(result.missing)} file(s) NOT restored, their content is missing or damaged "
        "(listed above as `not restored`; `vaultfs check` says more)"
    )


def _shell_words(what: str, paths: list[str]) -> str:
    """A target and its PATHs as they can be pasted into a shell, for the next command."""
    return " ".join(shlex.quote(word) for word in (what, *paths))


def _t(ns: int) -> str:
    return iso_utc(ns) if ns else "-"
