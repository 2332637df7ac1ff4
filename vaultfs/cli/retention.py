"""``vaultfs forget``, ``accept``, ``prune``, ``compact`` and ``recompress``: the command line
of `vaultfs.retention`.

Also `after_snapshot`, which ``vaultfs snapshot`` calls for each collection it
snapshotted (holding the vault lock) to apply the collection's keep rules.
"""

from __future__ import annotations

import argparse
import os
import pwd
import sys
import time
from typing import TYPE_CHECKING

from vaultfs.errors import EXIT_OK, EXIT_WARNINGS, UsageError
from vaultfs.output import AddCommand, display_path, emit_json, human_bytes, iso_utc, parse_target

if TYPE_CHECKING:  # imported lazily: every command pays for cli's imports
    from vaultfs import retention
    from vaultfs.config import CollectionConfig, Config, KeepPolicy
    from vaultfs.model import BandId, BandInfo
    from vaultfs.vault import Vault

# The periods of forget's --keep-daily ... --keep-yearly, in words (for --help).
_PERIOD_WORDS = {"daily": "days (UTC)", "weekly": "ISO weeks", "monthly": "months", "yearly": "years"}


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], add: AddCommand) -> None:
    """Add this module's subcommands; `add(name, help, description)` makes a parser with --json."""
    sp = add(
        "forget",
        "forget the versions no keep rule keeps",
        "Forget the versions of each named collection (default: every collection with keep\n"
        "rules in the config) that no keep rule keeps. The rules are restic's: each keeps\n"
        "versions on its own, and the union is kept, with the latest version:\n"
        "  --keep N          the newest N versions (keep_versions)\n"
        "  --keep-within D   every version created at most D (12h, 7d, 2w) before the newest\n"
        "                    version (not before now: a vault whose snapshots stopped keeps them)\n"
        "  --keep-daily N    the newest version of each of the last N days that have versions\n"
        "  --keep-weekly N   ... of the last N ISO weeks (Monday to Sunday) with versions\n"
        "  --keep-monthly N  ... of the last N months with versions\n"
        "  --keep-yearly N   ... of the last N years with versions\n"
        "Days, weeks, months and years are UTC, as `vaultfs versions` shows the times. Rules\n"
        "on the command line replace the collection's configured rules (keep_versions,\n"
        "keep_within, keep_daily, ...) as a whole. The output says which rule keeps each\n"
        "version. Forgetting is written down on the store (forgotten/<collection>/<n>.json)\n"
        "so no index rebuild brings a version back. Forgotten versions are no longer listed,\n"
        "mounted or restorable; their data stays until `vaultfs prune` deletes what no kept\n"
        "version needs.\n\n"
        "In a cold collection a version holding the last copy of files a newer version\n"
        "replaced or deleted is pinned: forget keeps it (and says so) until `vaultfs accept`\n"
        "records that the change was intended.\n\n"
        "Example: vaultfs forget code --keep-within 2d --keep-daily 14 --keep-weekly 8 --dry-run",
    )
    sp.add_argument("collections", nargs="*", metavar="COLLECTION")
    sp.add_argument(
        "--keep",
        "--keep-last",
        dest="keep_versions",
        type=int,
        metavar="N",
        help="keep the newest N versions (keep_versions)",
    )
    sp.add_argument(
        "--keep-within",
        metavar="DURATION",
        help='keep every version created within this long before the newest one ("12h", "7d", "2w")',
    )
    for period in ("daily", "weekly", "monthly", "yearly"):
        sp.add_argument(
            f"--keep-{period}",
            type=int,
            metavar="N",
            help=f"keep the newest version of each of the last N {_PERIOD_WORDS[period]} with versions",
        )
    sp.add_argument("--dry-run", action="store_true", help="show what would be forgotten; change nothing")
    sp.set_defaults(func=cmd_forget)

    sp = add(
        "accept",
        "say that changes to a cold collection were intended (releases pinned versions)",
        "In a cold collection, a version that holds the last copy of files a newer version\n"
        "replaced or deleted is pinned: forget and keep_versions skip it and prune keeps its\n"
        "bands, because the change may be rot or an accident (`vaultfs versions` shows the\n"
        "pins). accept records that every change up to COLLECTION@vN (default: the latest\n"
        "version) was intended, or only those under the given PATHs (relative to the\n"
        "collection's root); versions whose pinned files are all covered are released, and\n"
        "the next forget and prune may drop them. Who accepted what and when is kept for\n"
        "good, on the store (accepted/<collection>/<n>-<time>.json) and in `vaultfs\n"
        "versions --json`.\n\n"
        "Examples:\n"
        "  vaultfs accept photos@v7            every change up to v7 was intended\n"
        "  vaultfs accept photos 2019/trip     only the changes under 2019/trip",
    )
    sp.add_argument("what", metavar="COLLECTION[@vN]", help="default version: the latest")
    sp.add_argument("paths", nargs="*", metavar="PATH", help="accept only the changes under these paths")
    sp.add_argument("--dry-run", action="store_true", help="show what would be released; record nothing")
    sp.set_defaults(func=cmd_accept)

    sp = add(
        "prune",
        "delete bands that no kept version needs",
        "Delete the bands (and their sidecar catalogs and index entries) that hold nothing a\n"
        "kept version needs, and the version records of forgotten versions. A band is deleted\n"
        "only once its storage class's minimum duration has passed (DEEP_ARCHIVE 180 days,\n"
        "GLACIER and GLACIER_IR 90, STANDARD_IA and ONEZONE_IA 30), unless\n"
        "--allow-early-delete, which pays the early-deletion charge shown. Bands partly in use\n"
        "are kept (rewriting an archived band would need a restore); the report shows how much\n"
        "of each is garbage. Always prints the bytes freed and the charges; --dry-run first.",
    )
    sp.add_argument("--dry-run", action="store_true", help="show what would be deleted; change nothing")
    sp.add_argument(
        "--allow-early-delete",
        action="store_true",
        help="also delete unused bands younger than their storage class's minimum duration",
    )
    sp.set_defaults(func=cmd_prune)

    sp = add(
        "compact",
        "rewrite warm bands that are mostly garbage after forgets",
        "A band of a forgotten version that still holds some files kept versions use is\n"
        "never deleted by prune. compact copies the live files of such bands (and the\n"
        "directory listings their catalogs carry) into new bands, checking each file's\n"
        "SHA-256 as it is read, then deletes the old bands. Only bands of warm collections\n"
        "that are readable now (STANDARD storage class) qualify, and only when at least\n"
        "--min-garbage of their bytes is garbage; archived bands are never touched (reading\n"
        "them would need a restore). Safe to interrupt: the next compact or prune finishes.\n"
        "Prints the bands chosen, the bytes rewritten and the bytes freed; --dry-run first.\n\n"
        "Examples:\n"
        "  vaultfs compact --dry-run                 what would be rewritten and freed\n"
        "  vaultfs compact --min-garbage 80%         only bands at least 80% garbage",
    )
    sp.add_argument("--dry-run", action="store_true", help="show what would be rewritten; change nothing")
    sp.add_argument(
        "--min-garbage",
        type=garbage_share,
        default=0.5,
        metavar="PCT",
        help="rewrite bands with at least this share of garbage bytes (default 50%%; 0.5 works too)",
    )
    sp.set_defaults(func=cmd_compact)

    sp = add(
        "recompress",
        "rewrite cold bands written at a low zstd level, before they are archived",
        "A backup to a fast store (a local disk, a NAS on the LAN) leaves compression_level =\n"
        '"auto" at its lowest level (auto_min, 3): the store never waits, so no frame is worth\n'
        "more CPU. Cold data is written once and kept for years; recompress spends idle CPU to\n"
        "store it smaller. It copies the live files of each band that qualifies into a new band\n"
        "at the target level (--level, default [vault].auto_max, 19), checking each file's\n"
        "SHA-256 as it is read, then deletes the old band.\n\n"
        "A band qualifies when it belongs to a cold collection, is in the STANDARD class (in\n"
        "the local catalog and on the store: an archived band is never touched, reading it\n"
        "would need a restore) and at least 10% of its data is in compressible frames below\n"
        "the target (the levels its catalog records; a band written before levels were\n"
        "recorded counts as level 3). Frames that do not compress stay at the cheapest level,\n"
        "so photos and videos cost little. The band a version's snapshot wrote is rewritten\n"
        "too: its new band carries the version's record and directory listings, and `vaultfs\n"
        "versions`, `check` and `index rebuild` find it.\n\n"
        "Slow on purpose: level 19 compresses 2-4 MB/s per core. Run it when the NAS is idle\n"
        "(nice -n 19 vaultfs recompress). Safe to interrupt at any point: the next recompress\n"
        "finishes what was left. --dry-run compresses a sample of each band's frames at the\n"
        "target level and prints the estimated saving; it changes nothing.\n\n"
        "Examples:\n"
        "  vaultfs recompress --dry-run               which bands, and about how much smaller\n"
        "  vaultfs recompress --collection photos     only the bands of photos\n"
        "  vaultfs recompress --level 12              a lower target: several times quicker",
    )
    sp.add_argument("--dry-run", action="store_true", help="estimate the saving; change nothing")
    sp.add_argument(
        "--level",
        type=zstd_level,
        metavar="N",
        help="the zstd level to rewrite at, 1 to 22 (default: [vault].auto_max, 19)",
    )
    sp.add_argument(
        "--collection",
        action="append",
        default=[],
        metavar="C",
        help="only the bands of this collection (repeat for more; default: every cold collection)",
    )
    sp.set_defaults(func=cmd_recompress)


# ---- forget ------------------------------------------------------------------------------


def cmd_forget(args: argparse.Namespace, config: Config) -> int:
    from vaultfs import retention
    from vaultfs.config import KEEP_RULES, parse_keep_policy
    from vaultfs.vault import Vault

    options = {
        rule: "--keep" if rule == "keep_versions" else "--" + rule.replace("_", "-") for rule in KEEP_RULES
    }
    override = parse_keep_policy({rule: getattr(args, rule) for rule in KEEP_RULES}, options)
    configured = {c.name: c.keep_policy for c in config.collections}
    if config.clients or any(n not in configured for n in args.collections):
        configured.update(_client_collections(config, configured))
    policies, skipped = retention.keep_for(args.collections, configured, override)
    vault = Vault.open(config, readonly=args.dry_run)
    try:
        if args.dry_run:
            results = retention.forget(vault, policies, dry_run=True)
        else:
            with vault.lock():
                results = retention.forget(vault, policies)
    finally:
        vault.close()
    if args.json:
        emit_json(
            {
                "dry_run": args.dry_run,
                "collections": [r.to_json() for r in results],
                "skipped": skipped,
            }
        )
        return EXIT_OK
    if not args.quiet:
        for r in results:
            print(describe_forget(r))
            for line in describe_kept(r):
                print("  " + line)
            for line in describe_pins(r.pinned):
                print("  " + line)
        for name in skipped:
            print(f"{name}: no keep rules configured: nothing forgotten (--keep N, --keep-daily N, ...)")
        if any(r.forgotten for r in results) and not args.dry_run:
            print("run `vaultfs prune` to delete the data only forgotten versions used")
    return EXIT_OK


def _client_collections(config: Config, configured: dict[str, KeepPolicy]) -> dict[str, KeepPolicy]:
    """The collections of a hub's clients (in the catalog, not in the config) and their keep
    rules (``[clients.NAME]``; docs/hub.md)."""
    from vaultfs.vault import Vault

    vault = Vault.open(config, readonly=True)
    try:
        names = [n for n in vault.catalog.collections() if n not in configured]
    finally:
        vault.close()
    return {name: config.client_keep(name) for name in names}


def describe_forget(r: retention.ForgetResult) -> str:
    """``photos: would forget 2 version(s) v1, v2; keeping 2 (v3, v4) by keep_daily 7``."""
    rules = r.policy.describe()
    if not r.forgotten:
        return f"{r.collection}: {len(r.kept)} version(s), {rules}: nothing to forget"
    verb = "would forget" if r.dry_run else "forgot"
    return (
        f"{r.collection}: {verb} {len(r.forgotten)} version(s) {_numbers(r.forgotten)}; "
        f"keeping {len(r.kept)} ({_numbers(r.kept) or 'none'}) by {rules}"
    )


def describe_kept(r: retention.ForgetResult) -> list[str]:
    """One line per kept version: when it was made and every reason it is kept
    (``v8  2024-03-04T12:00:00Z  latest, keep_daily (2024-03-04), keep_weekly (2024-W10)``)."""
    return [
        f"v{n}  {iso_utc(r.created_ns[n])}  {', '.join(str(reason) for reason in r.reasons.get(n, ()))}"
        for n in r.kept
    ]


def after_snapshot(
    vault: Vault, collection: CollectionConfig, *, quiet: bool
) -> retention.ForgetResult | None:
    """Apply the collection's keep rules (``keep_versions``, ``keep_daily``, ...) to a
    collection just snapshotted; None when it has none.

    The caller holds the vault lock. Prints one line when versions were forgotten
    (unless ``quiet``); pruning stays a separate, explicit step.
    """
    policy = collection.keep_policy
    if policy.empty:
        return None
    from vaultfs import retention

    result = retention.forget(vault, {collection.name: policy})[0]
    if (result.forgotten or result.pinned) and not quiet:
        print(describe_forget(result))
        for line in describe_pins(result.pinned):
            print("  " + line)
    return result


def describe_pins(pinned: tuple[retention.Pin, ...] | list[retention.Pin]) -> list[str]:
    """One line per pinned version: what it holds, and the command that releases it."""
    return [f"{p.describe()} (`{p.accept_command}` releases it if the change was intended)" for p in pinned]


# ---- accept ------------------------------------------------------------------------------


def cmd_accept(args: argparse.Namespace, config: Config) -> int:
    from vaultfs import retention
    from vaultfs.extract import parse_selection
    from vaultfs.vault import Vault

    collection, number = parse_target(args.what)
    if "" in args.paths:  # an empty shell variable ("$DIR") would accept the whole collection
        raise UsageError(
            "an empty PATH: give a path inside the collection, "
            "or leave PATH out to accept every change up to the version"
        )
    paths = [b"/".join(parts) for parts in parse_selection(args.paths)]
    vault = Vault.open(config, readonly=args.dry_run)
    try:
        vault.check_collection(collection)
        if args.dry_run:
            result = retention.accept(vault, collection, number, paths, by=whoami(), dry_run=True)
        else:
            with vault.lock():
                result = retention.accept(vault, collection, number, paths, by=whoami())
    finally:
        vault.close()
    if args.json:
        emit_json(result.to_json())
    elif not args.quiet:
        for line in describe_accept(result):
            print(line)
    return EXIT_OK


def whoami() -> str:
    """``user@host`` of this process (its effective uid; the uid when it has no name)."""
    import socket  # here: the module is ~5 ms of every command's start-up

    try:
        user = pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        user = str(os.geteuid())
    return f"{user}@{socket.gethostname()}"


def describe_accept(r: retention.AcceptResult) -> list[str]:
    a = r.acceptance
    if a is None:
        return [f"{r.collection}: nothing to accept: no version up to v{r.up_to} is pinned"]
    where = f" under {', '.join(display_path(p) for p in a.paths)}" if a.paths else ""
    verb = "would record" if r.dry_run else "recorded"
    out = [
        f"{r.collection}: {verb} that the changes up to v{r.up_to}{where} were intended "
        f"(by {a.by} at {iso_utc(a.at_ns)})"
    ]
    if r.released:
        them = "it" if len(r.released) == 1 else "them"
        out.append(
            f"{'would release' if r.dry_run else 'released'} {_numbers(r.released)}: no longer "
            f"pinned (`vaultfs forget` and `vaultfs prune` may now drop {them})"
        )
    out += [f"still {line}" for line in describe_pins(r.pinned)]
    return out


# ---- prune -------------------------------------------------------------------------------


def cmd_prune(args: argparse.Namespace, config: Config) -> int:
    from vaultfs import retention
    from vaultfs.vault import Vault

    names = [c.name for c in config.collections]
    vault = Vault.open(config, readonly=args.dry_run)
    try:
        if args.dry_run:
            result = retention.prune(
                vault,
                dry_run=True,
                allow_early_delete=args.allow_early_delete,
                now=time.time_ns,
                collections=names,
            )
        else:
            with vault.lock():
                result = retention.prune(
                    vault,
                    allow_early_delete=args.allow_early_delete,
                    now=time.time_ns,
                    collections=names,
                )
    finally:
        vault.close()
    if args.json:
        emit_json(result.to_json())
    elif not args.quiet:
        for line in describe_prune(result):
            print(line)
    for b in result.of("keep-unreadable"):
        print(
            f"warning: band {b.band} looks unused but its sidecar catalog cannot be read: "
            "kept; run `vaultfs check`",
            file=sys.stderr,
        )
    return EXIT_OK


def describe_prune(r: retention.PruneResult) -> list[str]:
    """The human report: always the bytes freed and the charges, then what was kept and why."""

    would = "would " if r.dry_run else ""
    out: list[str] = []
    if r.unadopted_versions:
        out.append(
            f"note: {r.unadopted_versions} version(s) are committed on the store but not yet in "
            "the local catalog; the real prune adopts them first, which may keep more"
        )
    out += _deleted_lines(r, would)
    out += _kept_lines(r)
    out.append(
        f"{would}delete {len(r.version_records)} version record(s) of forgotten versions; "
        f"{would}drop {r.trees_dropped} unused tree(s) and {r.blobs_dropped} blob entries "
        "from the index"
    )
    if r.index_objects:
        out.append(
            f"{would}delete {len(r.index_objects)} superseded consolidated-index "
            "object(s) (two full ones and the deltas after them are kept)"
        )
    if r.deletions_resumed:
        out.append(f"finished deleting {r.deletions_resumed} band(s) an interrupted prune left")
    out.append(f"prices: {r.prices.taken} ([prices] in the config)")
    return out


def _deleted_lines(r: retention.PruneResult, would: str) -> list[str]:
    """The bands deleted (or that would be), with their early-deletion charges."""
    deleted = r.deleted
    out = [
        f"{would}delete {len(deleted)} band(s): {would}free {human_bytes(r.bytes_freed)} "
        f"({r.bytes_freed} bytes), saving ${r.monthly_saving_usd:.4f}/month"
    ]
    for b in deleted:
        early = (
            f", early-deletion charge ${b.early_charge_usd:.4f} "
            f"({b.min_days - b.age_days:.0f} of {b.min_days} days left)"
            if b.action == "delete-early"
            else ""
        )
        gone = "" if b.exists else " (object already gone)"
        out.append(
            f"  {b.band}  {b.storage_class}  {human_bytes(b.size)}  age {b.age_days:.1f}d{early}{gone}"
        )
    out.append(f"early-deletion charge: ${r.early_charge_usd:.4f}")
    return out


def _kept_lines(r: retention.PruneResult) -> list[str]:
    """The bands kept although unused or partly used, and why."""
    out: list[str] = []
    young = r.of("keep-young")
    if young:
        out.append(
            f"kept {len(young)} unused band(s) younger than their storage class's minimum "
            f"duration; deleting them now (--allow-early-delete) would be charged "
            f"${r.young_charge_usd:.4f}:"
        )
        for b in young:
            out.append(
                f"  {b.band}  {b.storage_class}  {human_bytes(b.size)}  age {b.age_days:.1f}d of "
                f"{b.min_days}d minimum, early-deletion charge ${b.early_charge_usd:.4f}"
            )
    partly = r.partly_used
    if partly:
        out.append(f"kept {len(partly)} band(s) partly in use (never rewritten):")
        for b in partly:
            out.append(
                f"  {b.band}  {b.storage_class}  {human_bytes(b.size)}  garbage "
                f"{b.garbage_fraction:.0%} ({b.dead_blobs} of {b.dead_blobs + b.live_blobs} "
                f"blobs, ~{human_bytes(b.size * b.garbage_fraction)})"
            )
    carriers = r.of("keep-trees")
    if carriers:
        out.append(
            f"kept {len(carriers)} band(s) without data whose catalogs carry directory "
            "listings of kept versions"
        )
    if r.trees_rehomed:
        out.append(
            f"{'would copy' if r.dry_run else 'copied'} {r.trees_rehomed} directory listing(s) "
            f"still in use out of deleted bands into band {r.carrier_band or '(new)'}"
        )
    return out


# ---- compact -----------------------------------------------------------------------------


def garbage_share(text: str) -> float:
    """``50%`` or ``0.5`` → 0.5 (argparse type)."""
    try:
        share = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        share = -1.0
    if not 0.01 <= share <= 1:  # below 1%: every band with a byte of garbage is rewritten
        raise argparse.ArgumentTypeError(f"{text!r}: expected a share of garbage from 1% to 100%, e.g. 50%")
    return share


def cmd_compact(args: argparse.Namespace, config: Config) -> int:
    from vaultfs import retention
    from vaultfs.progress import TerminalProgress
    from vaultfs.vault import Vault

    names = [c.name for c in config.collections]
    vault = Vault.open(config, readonly=args.dry_run)
    try:
        if args.dry_run:
            result = retention.compact(vault, dry_run=True, min_garbage=args.min_garbage, collections=names)
        else:
            with vault.lock(), TerminalProgress("compact", enabled=None if not args.quiet else False) as prog:
                result = retention.compact(
                    vault, min_garbage=args.min_garbage, progress=prog, collections=names
                )
    finally:
        vault.close()
    return _report(args, result, describe_compact(result))


def _report(
    args: argparse.Namespace, result: retention.CompactResult | retention.RecompressResult, lines: list[str]
) -> int:
    """What compact and recompress print (their --json, or warnings and `lines`) and their exit
    status: 3 when something was left with a problem."""
    code = EXIT_WARNINGS if result.problems else EXIT_OK
    if args.json:
        emit_json({**result.to_json(), "exit_code": code})
        return code
    for problem in result.problems:
        print(f"vaultfs: warning: {problem}", file=sys.stderr)
    if not args.quiet:
        for line in lines:
            print(line)
    return code


def describe_compact(r: retention.CompactResult) -> list[str]:
    """The human report: the bands chosen, the bytes rewritten and freed, the bands left."""
    out: list[str] = []
    if r.unadopted_versions:
        out.append(
            f"note: {r.unadopted_versions} version(s) are committed on the store but not yet in "
            "the local catalog; the real compact adopts them first, which may change the plan"
        )
    if r.spool_recovered or r.deletions_resumed:
        out.append(
            f"finished what an interrupted run left: uploaded {r.spool_recovered} band(s), "
            f"deleted {r.deletions_resumed} band(s)"
        )
    if not r.chosen:
        out.append(f"nothing to compact: no readable warm band is {r.min_garbage:.0%} garbage or more")
    else:
        rewrite, copy, free = (
            ("would rewrite", "would copy", "would free about")
            if r.dry_run
            else ("rewrote", "copied", "freed")
        )
        out.append(
            f"{rewrite} {len(r.chosen)} band(s) at least {r.min_garbage:.0%} garbage: "
            f"{copy} {human_bytes(r.bytes_rewritten)} of live files ({r.bytes_rewritten} bytes), "
            f"{free} {human_bytes(r.bytes_freed)} ({r.bytes_freed} bytes) on the store"
        )
        for c in r.chosen:
            p = c.plan
            note = " (kept: a file could not be read)" if c.kept else ""
            out.append(
                f"  {p.band}  {p.collection}  {human_bytes(p.size)}  garbage {p.garbage_fraction:.0%} "
                f"({p.dead_blobs} of {p.dead_blobs + p.live_blobs} files){note}"
            )
        if r.new_bands:
            out.append(f"wrote {len(r.new_bands)} new band(s): {', '.join(b.band for b in r.new_bands)}")
    if r.skipped:
        out.append(f"left {len(r.skipped)} band(s) that are garbage enough:")
        for p, why in r.skipped:
            out.append(f"  {p.band}  {p.collection}  garbage {p.garbage_fraction:.0%}: {why}")
    return out


# ---- recompress ---------------------------------------------------------------------------


def zstd_level(text: str) -> int:
    """``--level``: a zstd level, 1 to 22 (argparse type)."""
    try:
        level = int(text)
    except ValueError:
        level = 0
    if not 1 <= level <= 22:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a zstd level from 1 to 22, e.g. 19")
    return level


def cmd_recompress(args: argparse.Namespace, config: Config) -> int:
    from vaultfs import retention
    from vaultfs.progress import TerminalProgress
    from vaultfs.vault import Vault

    level = args.level if args.level is not None else config.auto_max
    names = [c.name for c in config.collections]
    vault = Vault.open(config, readonly=args.dry_run)
    try:
        known = set(names) | set(vault.catalog.collections())
        unknown = [c for c in args.collection if c not in known]
        if unknown:
            raise UsageError(
                f"--collection {unknown[0]}: no such collection (known: {', '.join(sorted(known)) or 'none'})"
            )
        if args.dry_run:
            result = retention.recompress(
                vault, level=level, dry_run=True, only=args.collection, collections=names
            )
        else:
            enabled = None if not args.quiet else False
            with vault.lock(), TerminalProgress("recompress", enabled=enabled) as prog:
                result = retention.recompress(
                    vault, level=level, only=args.collection, progress=prog, collections=names
                )
    finally:
        vault.close()
    return _report(args, result, describe_recompress(result))


def describe_recompress(r: retention.RecompressResult) -> list[str]:
    """The human report: one summary line, then each band and each band left."""
    finished = [c for c in r.bands if c.replaced_by is not None]
    rewritten = [c for c in r.bands if c.replaced_by is None]
    out: list[str] = [_recompress_summary(r, rewritten)]
    if r.unadopted_versions:
        out.append(
            f"note: {r.unadopted_versions} version(s) are committed on the store but not yet in "
            "the local catalog; the real recompress adopts them first, which may change the plan"
        )
    if r.spool_recovered or r.deletions_resumed or (finished and not r.dry_run):
        out.append(
            f"finished what an interrupted run left: uploaded {r.spool_recovered} band(s), "
            f"dropped {len(finished)} band(s) already copied, deleted {r.deletions_resumed} band(s)"
        )
    new = {b.band: b for b in r.new_bands}
    out += [_recompress_line(r, c, new) for c in rewritten]
    if r.dry_run and finished:
        out.append(f"  and {len(finished)} band(s) an interrupted run already copied, to be dropped")
    # Archived bands are counted, not listed (a vault that archives has thousands): --json lists them.
    left = [(p, why) for p, why in r.skipped if p.storage_class == "STANDARD"]
    if r.archived and rewritten:  # else the summary says it
        out.append(f"left {r.archived} archived band(s) below level {r.level}: recompress never touches them")
    if left:
        out.append(f"left {len(left)} band(s) below level {r.level}:")
        for p, why in left[:_LEFT_SHOWN]:
            out.append(f"  {p.band}  {p.collection}: {why}")
        if len(left) > _LEFT_SHOWN:
            out.append(f"  … and {len(left) - _LEFT_SHOWN} more (--json lists all)")
    return out


_LEFT_SHOWN = 20


def _recompress_line(
    r: retention.RecompressResult, c: retention.Recompressed, new: dict[BandId, BandInfo]
) -> str:
    """One band: its size, levels and share below the target; its copy (or the estimate)."""
    p = c.plan
    levels = f"levels {min(c.levels)}-{max(c.levels)}" if c.levels else "no data frames"
    if not c.levels_known:
        levels = "levels not recorded (counted as 3)"
    if c.kept:
        after = "kept: a file could not be read"
    elif r.dry_run:
        after = f"about {human_bytes(c.estimate or 0)}"
    elif c.new_band in new:
        after = f"{human_bytes(new[c.new_band].size)} in {c.new_band}"
    else:
        after = "not rewritten (the run stopped)"
    share = f"{c.low_share:.0%} below {r.level}"
    return f"  {p.band}  {p.collection}  {human_bytes(p.size)}  {levels}, {share} -> {after}"


def _recompress_summary(r: retention.RecompressResult, rewritten: list[retention.Recompressed]) -> str:
    if not rewritten:
        tail = f"{r.at_target} cold band(s) already at it or incompressible"
        if r.archived:
            tail += f", {r.archived} archived"
        what = "nothing to recompress" if not r.chosen else "no band to rewrite"
        return f"{what}: no readable cold band has enough data below zstd level {r.level} ({tail})"
    share = f" ({r.bytes_saved / r.old_bytes:.0%})" if r.old_bytes else ""
    before, after, saved = human_bytes(r.old_bytes), human_bytes(r.new_bytes), human_bytes(r.bytes_saved)
    if r.dry_run:
        return (
            f"would recompress {len(rewritten)} band(s) to zstd level {r.level}: {before} -> about "
            f"{after} on the store, saving about {saved}{share} (estimated from {r.sampled_frames} "
            f"sampled frame(s))"
        )
    done = sum(1 for c in rewritten if c.new_band is not None)
    return (
        f"recompressed {done} band(s) to zstd level {r.level}: {before} -> {after} on the store, "
        f"saved {saved}{share}"
    )


# ---- output ------------------------------------------------------------------------------


def _numbers(numbers: tuple[int, ...]) -> str:
    return ", ".join(f"v{n}" for n in numbers)
