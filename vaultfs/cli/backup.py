"""``vaultfs init``, ``snapshot`` and ``versions``: making versions and listing them."""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from vaultfs.cli.limits import add_limit_options
from vaultfs.errors import EXIT_BITROT, EXIT_ERROR, EXIT_OK, EXIT_WARNINGS, ConfigError, SourceRefused
from vaultfs.output import AddCommand, display_path, emit_json, format_delta, human_bytes, iso_utc

if TYPE_CHECKING:  # imported when a command runs (startup time)
    from vaultfs.acceptance import Acceptance
    from vaultfs.config import Config
    from vaultfs.model import BlobId, TreeId, VersionInfo
    from vaultfs.retention.pins import Pin
    from vaultfs.vault import Vault

LIST_LIMIT = 20  # paths listed per kind of warning before "… and N more"
ACCEPT_PATHS_SHOWN = 5  # excluded paths written out in a suggested `vaultfs accept`


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], add: AddCommand) -> None:
    """Add this module's subcommands; `add(name, help, description)` makes a parser with --json."""
    add(
        "init",
        "create the vault described by the config",
        "Create the vault on the configured store (writes vault.json) and the local state\n"
        "directory. Safe to run again: an existing vault of this machine is left as it is.\n"
        "The bucket of an s3:// store must exist; vaultfs never creates buckets.",
    ).set_defaults(func=cmd_init)

    sp = add(
        "snapshot",
        "back up collections as new versions",
        "Snapshot the named collections (default: all in the config). Only files whose\n"
        "size, times or inode changed are read again; content already in the vault is not\n"
        "stored twice. A new version is made only if something changed.\n\n"
        "Exit status 3: files were skipped (unreadable, vanished, changed while read),\n"
        "metadata was not kept (`not kept:` lines: an xattr it may not read, an inode flag\n"
        "it does not keep), a cold collection had files modified or deleted (often an\n"
        "accident or a failing disk), or more than max_removed of the files were removed;\n"
        "the version is still written and nothing old is lost. Also 3: a band was found\n"
        "missing from the store; its content is stored again from the sources that still\n"
        "hold it.\n"
        "Exit status 4: the scrub slice of a cold collection (scrub_per_snapshot) found bit\n"
        "rot (the version is written; 4 outweighs 3, so a timer that counts 3 as success\n"
        "still fails on it). Its files that could not be read are warnings (3).\n"
        "Exit status 1: a collection was refused (its path is missing, unreadable or\n"
        "empty: is the volume mounted?); the others are still snapshotted.\n\n"
        "With [hub] in the config (a client of a vaultfs hub, docs/hub.md) the files are\n"
        "scanned and hashed here and only what the hub lacks is sent to it over SSH; the\n"
        "hub keeps the versions.",
    )
    sp.add_argument("collections", nargs="*", metavar="COLLECTION")
    add_limit_options(sp)
    sp.set_defaults(func=cmd_snapshot, via_hub=True)

    sp = add(
        "versions",
        "list the versions of a collection (default: of every collection)",
        "List every version of COLLECTION (default: of every collection in the config):\n"
        "number, creation time (UTC), time since the previous version, files\n"
        "added/changed/removed, bytes added, bands written and their state.\n"
        "In a cold collection, a version that holds the last copy of files a newer version\n"
        "replaced or deleted is pinned (PINNED: how many files; forget and prune keep it)\n"
        "until `vaultfs accept`; each acceptance is listed with who made it and when.\n"
        "--json: one collection gives {collection, versions, acceptances}; all of them\n"
        "{collections: [{collection, versions, acceptances}, ...]}.",
    )
    sp.add_argument("collection", metavar="COLLECTION", nargs="?")
    sp.set_defaults(func=cmd_versions, via_hub=True)


def cmd_init(args: argparse.Namespace, config: Config) -> int:
    from vaultfs.vault import Vault, secure_state_dir

    tightened = secure_state_dir(config.state_dir)
    if tightened and not args.json:
        print(f"vaultfs: {tightened}", file=sys.stderr)
    vault, created = Vault.create(config)
    vault.close()
    result = {
        "store": config.store,
        "state_dir": str(config.state_dir),
        "created": created,
        "tightened": tightened,
    }
    if args.json:
        emit_json(result)
    elif not args.quiet:
        what = "created" if created else "already initialised"
        print(f"vault {what}: store {config.store}, state {config.state_dir}")
    return EXIT_OK


def cmd_snapshot(args: argparse.Namespace, config: Config) -> int:
    from vaultfs import testpoints
    from vaultfs.cli import limits
    from vaultfs.cli import retention as cli_retention
    from vaultfs.cli import scrub as cli_scrub
    from vaultfs.malloc import relax_cycle_collector, tune_for_large_buffers
    from vaultfs.progress import TerminalProgress
    from vaultfs.snapshot import Snapshot
    from vaultfs.vault import Vault

    if config.hub is not None:  # a hub's client: the hub keeps the versions
        from vaultfs.cli import hub as cli_hub

        return cli_hub.snapshot(args, config)
    tune_for_large_buffers()
    relax_cycle_collector()
    names = args.collections or [c.name for c in config.collections]
    if not names:
        raise ConfigError("no collections configured: add a [collections.NAME] table")
    selected = [config.collection(n) for n in names]
    vault = Vault.open(config)
    results = []
    refused: list[SourceRefused] = []  # their collections got no version; the others go on
    try:
        with vault.lock():
            for coll in selected:
                try:
                    enabled = None if not args.quiet else False
                    with TerminalProgress(coll.name, enabled, note=limits.note(config)) as prog:
                        result = Snapshot(vault, coll, prog, now=testpoints.snapshot_clock()).run()
                except SourceRefused as e:
                    refused.append(e)
                    print(f"vaultfs: error: {e.message}", file=sys.stderr)
                    continue
                kept = cli_retention.after_snapshot(vault, coll, quiet=args.quiet or args.json)
                forgotten = kept.forgotten if kept is not None else ()
                scrubbed = cli_scrub.after_snapshot(vault, coll)
                results.append((result, forgotten, scrubbed))
                if not args.json:
                    print_snapshot(result, quiet=args.quiet, forgotten=forgotten)
                    if scrubbed is not None:
                        cli_scrub.print_report(scrubbed, quiet=args.quiet, label=f"{coll.name}: scrub slice")
    finally:
        vault.close()
    # A collection without a new version is an error (1), which outweighs bit rot found by
    # a scrub slice (4), which outweighs warnings (3): a schedule counts 3 as success.
    rot = any(s is not None and s.rot for _, _, s in results)
    warnings = any(r.warnings or (s is not None and s.unreadable) for r, _, s in results)
    code = EXIT_ERROR if refused else EXIT_BITROT if rot else EXIT_WARNINGS if warnings else EXIT_OK
    if args.json:
        emit_json(
            {
                "collections": [
                    {**snapshot_json(r, f), "scrub": s.to_json() if s is not None else None}
                    for r, f, s in results
                ],
                "refused": [e.message for e in refused],
                "exit_code": code,
            }
        )
    return code


def print_snapshot(r: Any, quiet: bool, forgotten: Sequence[int] = ()) -> None:
    """What one collection's snapshot did; `forgotten`: the versions the keep rules forgot
    after it (a version forgotten no longer holds anything anyone can get at)."""
    for note in r.notes:
        print(f"note: {r.collection}: {note}", file=sys.stderr)
    _print_warnings(r)
    if not quiet:
        _print_summary(r, forgotten)


def _print_warnings(r: Any) -> None:
    for m in r.lost_bands:
        print(
            f"WARNING: band {m.band} is missing from the store: the {m.blobs} blob(s) it held "
            "are lost; this snapshot stores again those its source still holds "
            "(`vaultfs check` lists the files lost for good)"
            if m.blobs
            else f"WARNING: band {m.band} is missing from the store; it held no file content (only "
            "catalog records, which the local catalog still has)",
            file=sys.stderr,
        )
    _print_left_out(r)
    _print_cold_changes(r)
    if r.mass_removal is not None:
        m = r.mass_removal
        print(
            f"WARNING: {r.collection}: this snapshot removes {m.removed} of the {m.previous_files} "
            f"files of v{m.previous_version} (more than max_removed = {m.limit}); the new version "
            f"is written and v{m.previous_version} keeps them. Is the volume mounted and healthy? "
            f"If the removal is intended, raise [collections.{r.collection}].max_removed",
            file=sys.stderr,
        )


def _print_summary(r: Any, forgotten: Sequence[int]) -> None:
    rate = r.bytes_read / r.seconds if r.seconds > 0 else 0
    read = f"read {r.files_read} files ({human_bytes(r.bytes_read)}, {human_bytes(rate)}/s)"
    healed = (
        f"re-stored {r.restored_lost} file(s) whose band was lost, in {r.bands} band(s); "
        if r.restored_lost
        else ""
    )
    if r.unchanged and r.latest is not None and r.restored_lost:
        print(f"{r.collection}: unchanged since v{r.latest.number}; {healed}{read}")
    elif r.unchanged and r.latest is not None:
        # Honest words: files whose stat data matched were not read, so nothing was
        # verified; only files read again were hashed (and found the same content).
        print(f"{r.collection}: unchanged since v{r.latest.number} {_compared(r)}; {read}")
    elif r.version is not None:
        s = r.version.stats
        print(
            f"{r.collection}: v{r.version.number} created: {s.files} files, "
            f"{human_bytes(s.bytes)}; +{s.added} ~{s.changed} -{s.removed}; {healed}{read}; "
            f"stored {human_bytes(r.bytes_stored)} in {r.bands} band(s){_levels(r.levels)} "
            f"in {r.seconds:.2f}s"
            + (f"; kept {human_bytes(r.preview_bytes)} of previews hot" if r.preview_bytes else "")
        )
    if (r.now_excluded or r.now_included) and r.previous is not None:
        changed = []
        if r.now_excluded:
            held = (
                f"the keep rules forgot v{r.previous}, which held them"
                if r.previous in forgotten
                else f"v{r.previous} still holds them"
            )
            changed.append(
                f"{r.now_excluded:,} paths now excluded ({held}; `vaultfs explain` says which rule)"
            )
        if r.now_included:
            changed.append(f"{r.now_included:,} paths now included (v{r.previous} left them out)")
        print(f"{r.collection}: rules changed: {', '.join(changed)}")


def _levels(levels: tuple[int, int] | None) -> str:
    """`` at zstd level 3``, `` at zstd levels 3-9``; nothing when no frame was stored."""
    if levels is None:
        return ""
    lo, hi = levels
    return f" at zstd level {lo}" if lo == hi else f" at zstd levels {lo} to {hi}"


def _print_left_out(r: Any) -> None:
    """What the version leaves out of its source: skipped files, metadata not kept (once
    per kind, with its count)."""
    for p in r.problems:
        print(f"warning: {r.collection}: skipped {p.display()}", file=sys.stderr)
    for kind, count in r.not_kept.items():
        print(f"warning: {r.collection}: not kept: {count} {kind}", file=sys.stderr)


def _print_cold_changes(r: Any) -> None:
    """The warnings of a cold collection whose files were modified or deleted, and the pin
    of the version before (also when the rules now leave out files it holds)."""
    for kind, paths in (("modified", r.modified), ("deleted", r.deleted)):
        if not paths:
            continue
        print(
            f"WARNING: cold collection {r.collection}: {len(paths)} file(s) {kind} "
            "since the previous version (a failing disk or an accident?):",
            file=sys.stderr,
        )
        for path in paths[:LIST_LIMIT]:
            print(f"  {kind}: {display_path(path)}", file=sys.stderr)
        if len(paths) > LIST_LIMIT:
            print(f"  … and {len(paths) - LIST_LIMIT} more (--json lists all)", file=sys.stderr)
    if r.pinned is None or r.version is None:
        return
    c, n = r.collection, r.version.number
    if r.cold_changes:
        print(
            f"{c}: v{r.pinned} keeps the old content and is pinned: forget and prune keep it "
            f"until `vaultfs accept {c}@v{n}` says the change was intended",
            file=sys.stderr,
        )
    if r.now_excluded:
        tops = r.now_excluded_under
        command = (
            f"`{accept_command(r, [])} PATH…` (PATH: the {len(tops)} excluded paths, "
            "`now_excluded_under` in --json)"
            if len(tops) > ACCEPT_PATHS_SHOWN
            else f"`{accept_command(r, tops)}`"
        )
        print(
            f"{c}: v{r.pinned} holds {r.now_excluded:,} file(s) that the rules now leave out "
            f"and is pinned: forget and prune keep it until {command} says leaving them out "
            "was intended",
            file=sys.stderr,
        )


def accept_command(r: Any, paths: list[bytes]) -> str:
    """``vaultfs accept C@vN [PATH…]``: accepting the changes of the new version `r`
    (under `paths`: for files the rules now leave out, the excluded paths, so that other
    changes stay pinned)."""
    words = (shlex.quote(display_path(p)) for p in paths)
    return " ".join([f"vaultfs accept {r.collection}@v{r.version.number}", *words])


def _compared(r: Any) -> str:
    """How an unchanged collection was compared: by stat data alone, or with some files
    re-read and hashed (their bytes are then known to equal the version's)."""
    if r.files_read == 0:
        return "by size and times"
    return f"by size and times; {r.files_read} file(s) re-read and hashed, same content"


def snapshot_json(r: Any, forgotten: Sequence[int] = ()) -> dict[str, Any]:
    from vaultfs.model import to_text

    return {
        "collection": r.collection,
        "version": r.version.number if r.version else None,
        "latest": r.latest.number if r.latest else None,
        "unchanged": r.unchanged,
        "files_read": r.files_read,
        "bytes_read": r.bytes_read,
        "bands": r.bands,
        "bytes_stored": r.bytes_stored,
        "archived": r.archived,
        "dirs": r.dirs,
        "dirs_reused": r.dirs_reused,
        "seconds": round(r.seconds, 3),
        "upload_seconds": round(r.upload_seconds, 3),  # time spent sending bands
        "compression_levels": list(r.levels) if r.levels else None,  # [lowest, highest]
        "stats": r.latest.stats.to_json() if r.latest else None,
        "skipped": [{"path": to_text(p.path), "reason": p.reason} for p in r.problems],
        "not_kept": r.not_kept,
        "modified": [to_text(p) for p in r.modified],
        "deleted": [to_text(p) for p in r.deleted],
        "pinned": r.pinned,  # the version this one pinned (cold: files replaced, deleted, left out)
        # The command releasing it: every change, or only leaving out what the rules now exclude.
        "release": None
        if r.pinned is None
        else accept_command(r, [] if r.cold_changes else r.now_excluded_under),
        "forgotten": list(forgotten),  # versions the keep rules forgot after this snapshot
        "lost_bands": [{"band": m.band, "blobs": m.blobs} for m in r.lost_bands],
        "restored_lost": r.restored_lost,
        "preview_bytes": r.preview_bytes,  # cold: file bytes kept hot for previews (docs/mount.md)
        "excluded": r.excluded,
        "now_excluded": r.now_excluded,
        "now_excluded_under": [to_text(p) for p in r.now_excluded_under],
        "now_included": r.now_included,
        "notes": r.notes,
        "mass_removal": None
        if r.mass_removal is None
        else {
            "removed": r.mass_removal.removed,
            "previous_files": r.mass_removal.previous_files,
            "previous_version": r.mass_removal.previous_version,
            "max_removed": r.mass_removal.limit,
        },
    }


def cmd_versions(args: argparse.Namespace, config: Config) -> int:
    from vaultfs.vault import Vault

    if config.hub is not None:  # a hub's client: the hub keeps the versions
        from vaultfs.cli import hub as cli_hub

        return cli_hub.versions(args, config)
    vault = Vault.open(config, readonly=True)
    try:
        if args.collection:
            vault.check_collection(args.collection)
        if args.collection:
            names = [args.collection]
        else:  # the config's collections in its order, then any the catalog alone knows
            names = [c.name for c in config.collections]
            names += sorted(set(vault.catalog.collections()) - set(names))
        listed = [_listing(vault, name) for name in names]
    finally:
        vault.close()
    if args.json:
        docs = [ls.to_json() for ls in listed]
        emit_json(docs[0] if args.collection else {"collections": docs})
        return EXIT_OK
    for i, ls in enumerate(listed):
        if not ls.rows:
            print(f"{ls.collection}: no versions yet (run `vaultfs snapshot {ls.collection}`)")
            continue
        if not args.collection:
            print(("\n" if i else "") + f"{ls.collection}:")
        _print_versions(ls.rows)
        _print_pins(list(ls.pins.values()), ls.acceptances)
        last = ls.versions[-1]
        if last.verified_ns:
            print(
                f"v{last.number} found unchanged at {iso_utc(last.verified_ns[-1])} "
                "(by size and times; `vaultfs check --source` re-reads the files)"
            )
    return EXIT_OK


class _Listing(NamedTuple):
    """One collection's versions, a row of figures for each, and its pins and acceptances.
    (A NamedTuple, not a dataclass: the module is imported by every command to build the
    parser, and a dataclass costs ~1 ms of start-up there.)"""

    collection: str
    versions: list[VersionInfo]
    rows: list[dict[str, Any]]
    pins: dict[int, Pin]
    acceptances: list[Acceptance]

    def to_json(self) -> dict[str, Any]:
        from vaultfs import retention

        return {
            "collection": self.collection,
            "versions": self.rows,
            "acceptances": [retention.acceptance_json(a) for a in self.acceptances],
        }


def listing_json(vault: Vault, collection: str) -> dict[str, Any]:
    """`versions --json` of one collection (what a hub answers its client's `versions`)."""
    return _listing(vault, collection).to_json()


def print_listing(doc: dict[str, Any], i: int, *, single: bool) -> None:
    """One collection's versions from their --json form (`listing_json`), as a hub's client
    prints them."""
    name, rows = doc["collection"], doc["versions"]
    if not rows:
        print(f"{name}: no versions yet (run `vaultfs snapshot {name}`)")
        return
    if not single:
        print(("\n" if i else "") + f"{name}:")
    _print_versions(rows)
    if rows[-1]["verified"]:
        print(f"v{rows[-1]['version']} found unchanged at {rows[-1]['verified'][-1]} (by size and times)")


def _listing(vault: Vault, collection: str) -> _Listing:
    """The versions of one collection, and a row of figures for each (table and --json)."""
    from vaultfs import retention
    from vaultfs.model import band_successors, level_range

    versions = vault.versions(collection)
    bands = {b.band: b for b in vault.catalog.bands()}
    successors = band_successors(bands.values())  # recompressed since: their copies
    lost_blobs = vault.catalog.lost_blobs()  # empty: no walk, `versions` stays fast
    memo: dict[TreeId, list[tuple[bytes, BlobId]]] = {}
    lost = {v.number: vault.lost_files(v.root, lost_blobs, memo) if lost_blobs else [] for v in versions}
    acceptances = vault.catalog.acceptances(collection)
    pins = retention.pins(vault, collection, versions, acceptances)
    rows: list[dict[str, Any]] = []
    for v in versions:
        pin = pins.get(v.number)
        vb = [bands[b] for b in dict.fromkeys(successors.get(b, b) for b in v.bands) if b in bands]
        states: list[str] = sorted({b.state for b in vb}) or ["missing"]
        levels = level_range(vb)
        rows.append(
            {
                "version": v.number,
                "created": iso_utc(v.created_ns),
                "since_previous_s": (
                    (v.created_ns - v.previous_created_ns) / 1e9 if v.previous_created_ns else None
                ),
                "files": v.stats.files,
                "bytes": v.stats.bytes,
                "added": v.stats.added,
                "changed": v.stats.changed,
                "removed": v.stats.removed,
                "bytes_added": v.stats.bytes_added,
                "bands": len(v.bands),
                "bytes_stored": sum(b.size for b in vb),
                # [lowest, highest] zstd level of the frames of its bands (None: not recorded)
                "compression_levels": list(levels) if levels else None,
                "state": ",".join(states),
                "verified": [iso_utc(t) for t in v.verified_ns],
                "lost_files": len(lost[v.number]),  # files whose bytes are gone (see `lost`)
                "lost": [display_path(p) for p, _ in lost[v.number]],
                "pinned": None if pin is None else pin.to_json(),
                "accepted": [retention.acceptance_json(a) for a in acceptances if a.up_to == v.number],
            }
        )
    return _Listing(collection, versions, rows, pins, acceptances)


def _print_versions(rows: list[dict[str, Any]]) -> None:
    """The versions as a table; a LOST column only when some version has lost files."""
    any_lost = any(r["lost_files"] for r in rows)
    any_pinned = any(r["pinned"] for r in rows)
    header = (
        (
            "VERSION",
            "CREATED (UTC)",
            "SINCE PREV",
            "FILES",
            "ADDED",
            "CHANGED",
            "REMOVED",
            "BYTES ADDED",
            "BANDS",
            "STORED",
            "STATE",
        )
        + (("LOST",) if any_lost else ())
        + (("PINNED",) if any_pinned else ())
    )
    table = [header]
    for r in rows:
        table.append(
            (
                f"v{r['version']}",
                r["created"].replace("T", " ").rstrip("Z"),
                format_delta(r["since_previous_s"]),
                str(r["files"]),
                f"+{r['added']}",
                f"~{r['changed']}",
                f"-{r['removed']}",
                human_bytes(r["bytes_added"]),
                str(r["bands"]),
                human_bytes(r["bytes_stored"]),
                r["state"],
            )
            + ((str(r["lost_files"]),) if any_lost else ())
            + ((f"{r['pinned']['files']} file(s)" if r["pinned"] else "-",) if any_pinned else ())
        )
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    if any_lost:
        print(
            "LOST: files whose bytes are gone from the store (`vaultfs versions --json` "
            "lists them; a snapshot stores them again if a source still has them)"
        )


def _print_pins(pins: list[Any], acceptances: list[Any]) -> None:
    """A line per pinned version (what it holds, what releases it), then the acceptances."""
    from vaultfs.cli.retention import describe_pins

    for line in describe_pins(pins):
        print(line)
    for a in acceptances:
        where = f" under {', '.join(display_path(p) for p in a.paths)}" if a.paths else ""
        print(f"changes up to v{a.up_to}{where} accepted by {a.by} at {iso_utc(a.at_ns)}")
