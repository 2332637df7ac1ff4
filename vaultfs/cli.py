"""The ``vaultfs`` command line: argparse subcommands, config lookup, output, exit codes.

This is the only module that reads the environment or decides which config
file to use. Errors the user can fix (`VaultError`) print one line and exit
with their code; anything else is a bug and shows a traceback with --debug
(or a one-line "internal error" without it).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vaultfs import __version__
from vaultfs.config import Config, load_config
from vaultfs.errors import EXIT_ERROR, EXIT_OK, EXIT_WARNINGS, ConfigError, VaultError

LIST_LIMIT = 20  # paths listed per kind of warning before "… and N more"

DESCRIPTION = """\
vaultfs backs up collections of files (photos, media, source code) from a NAS
to S3 or a local directory as large compressed archives ("bands"), keeps every
version, moves cold data to Glacier Deep Archive, and mounts every version
read-only with FUSE.

The configuration is read from --config FILE, else $VAULTFS_CONFIG, else
~/.config/vaultfs/vault.toml, else /etc/vaultfs/vault.toml (see docs/config.md).

exit status:
  0  success
  1  error: nothing was committed by the step that failed
  2  usage or configuration error (bad config, store or credentials)
  3  finished, but some files were skipped or cold data changed (see the warnings)
"""


def find_config(arg: str | None) -> Path:
    if arg:
        return Path(arg)
    env = os.environ.get("VAULTFS_CONFIG")
    if env:
        return Path(env)
    candidates = [Path.home() / ".config" / "vaultfs" / "vault.toml", Path("/etc/vaultfs/vault.toml")]
    for c in candidates:
        if c.exists():
            return c
    raise ConfigError(
        "no configuration found: pass --config FILE, set VAULTFS_CONFIG, or create "
        "~/.config/vaultfs/vault.toml (see docs/config.md)"
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="vaultfs",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"vaultfs {__version__}")
    p.add_argument("--config", metavar="FILE", help="configuration file (TOML)")
    p.add_argument("--debug", action="store_true", help="log details and show tracebacks")
    p.add_argument("-q", "--quiet", action="store_true", help="print only warnings and errors")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    def add(name: str, help_text: str, description: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(
            name, help=help_text, description=description,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        sp.add_argument("--json", action="store_true", help="print a JSON result for scripts")
        return sp

    add(
        "init", "create the vault described by the config",
        "Create the vault on the configured store (writes vault.json) and the local state\n"
        "directory. Safe to run again: an existing vault of this machine is left as it is.\n"
        "The bucket of an s3:// store must exist; vaultfs never creates buckets.",
    ).set_defaults(func=cmd_init)

    sp = add(
        "snapshot", "back up collections as new versions",
        "Snapshot the named collections (default: all in the config). Only files whose\n"
        "size, times or inode changed are read again; content already in the vault is not\n"
        "stored twice. A new version is made only if something changed.\n\n"
        "Exit status 3: files were skipped (unreadable, vanished, changed while read), or a\n"
        "cold collection had files modified or deleted (often an accident or a failing disk);\n"
        "the version is still written and nothing old is lost.",
    )
    sp.add_argument("collections", nargs="*", metavar="COLLECTION")
    sp.set_defaults(func=cmd_snapshot)

    sp = add(
        "versions", "list the versions of a collection",
        "List every version: number, creation time (UTC), time since the previous version,\n"
        "files added/changed/removed, bytes added, bands written and their state.",
    )
    sp.add_argument("collection", metavar="COLLECTION")
    sp.set_defaults(func=cmd_versions)

    rp = sub.add_parser(
        "restore", help="get files back from a version",
        description="Restore files of a version. `restore fetch` writes them to a directory.",
    )
    rsub = rp.add_subparsers(dest="restore_command", metavar="ACTION")
    rsub.required = True
    fp = rsub.add_parser(
        "fetch", help="write files of a version into a directory",
        description=(
            "Write COLLECTION[@vN] (default: the latest version), or only the given PATHs\n"
            "inside it, under DIR with their metadata. Every file is checked against its\n"
            "SHA-256; nothing is ever written outside DIR."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    fp.add_argument("what", metavar="COLLECTION[@vN]")
    fp.add_argument("paths", nargs="*", metavar="PATH", help="paths inside the collection")
    fp.add_argument("--to", required=True, metavar="DIR", help="target directory")
    fp.add_argument("--json", action="store_true", help="print a JSON result for scripts")
    fp.set_defaults(func=cmd_restore_fetch)

    # Command groups that live in their own modules (each owns its commands' code).
    from vaultfs import cli_index, cli_mount, cli_retention

    for group in (cli_mount, cli_index, cli_retention):
        group.register(sub, add)
    return p


# ---- commands ----------------------------------------------------------------------------


def cmd_init(args: argparse.Namespace, config: Config) -> int:
    from vaultfs.vault import Vault

    vault, created = Vault.create(config)
    vault.close()
    result = {"store": config.store, "state_dir": str(config.state_dir), "created": created}
    if args.json:
        emit_json(result)
    elif not args.quiet:
        what = "created" if created else "already initialised"
        print(f"vault {what}: store {config.store}, state {config.state_dir}")
    return EXIT_OK


def cmd_snapshot(args: argparse.Namespace, config: Config) -> int:
    from vaultfs.progress import TerminalProgress
    from vaultfs.snapshot import Snapshot
    from vaultfs.vault import Vault

    names = args.collections or [c.name for c in config.collections]
    if not names:
        raise ConfigError("no collections configured: add a [collections.NAME] table")
    selected = [config.collection(n) for n in names]
    vault = Vault.open(config)
    results = []
    code = EXIT_OK
    try:
        with vault.lock():
            for coll in selected:
                with TerminalProgress(coll.name, enabled=None if not args.quiet else False) as prog:
                    result = Snapshot(vault, coll, prog).run()
                results.append(result)
                if result.problems or result.cold_changes:
                    code = EXIT_WARNINGS
                if not args.json:
                    print_snapshot(result, quiet=args.quiet)
    finally:
        vault.close()
    if args.json:
        emit_json({"collections": [snapshot_json(r) for r in results], "exit_code": code})
    return code


def print_snapshot(r: Any, quiet: bool) -> None:
    from vaultfs.source import display_path

    for p in r.problems:
        print(f"warning: {r.collection}: skipped {p.display()}", file=sys.stderr)
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
    if quiet:
        return
    rate = r.bytes_read / r.seconds if r.seconds > 0 else 0
    read = f"read {r.files_read} files ({human_bytes(r.bytes_read)}, {human_bytes(rate)}/s)"
    if r.unchanged and r.latest is not None:
        print(f"{r.collection}: unchanged since v{r.latest.number}, verified; {read}")
    elif r.version is not None:
        s = r.version.stats
        print(
            f"{r.collection}: v{r.version.number} created: {s.files} files, "
            f"{human_bytes(s.bytes)}; +{s.added} ~{s.changed} -{s.removed}; {read}; "
            f"stored {human_bytes(r.bytes_stored)} in {r.bands} band(s) in {r.seconds:.1f}s"
        )


def snapshot_json(r: Any) -> dict[str, Any]:
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
        "seconds": round(r.seconds, 3),
        "stats": r.latest.stats.to_json() if r.latest else None,
        "skipped": [{"path": to_text(p.path), "reason": p.reason} for p in r.problems],
        "modified": [to_text(p) for p in r.modified],
        "deleted": [to_text(p) for p in r.deleted],
    }


def cmd_versions(args: argparse.Namespace, config: Config) -> int:
    from vaultfs.vault import Vault

    config.collection(args.collection)
    vault = Vault.open(config, readonly=True)
    try:
        versions = vault.versions(args.collection)
        bands = {b.band: b for b in vault.catalog.bands()}
    finally:
        vault.close()
    rows: list[dict[str, Any]] = []
    for v in versions:
        vb = [bands[b] for b in v.bands if b in bands]
        states: list[str] = sorted({b.state for b in vb}) or ["missing"]
        rows.append({
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
            "state": ",".join(states),
            "verified": [iso_utc(t) for t in v.verified_ns],
        })
    if args.json:
        emit_json({"collection": args.collection, "versions": rows})
        return EXIT_OK
    if not rows:
        print(f"{args.collection}: no versions yet (run `vaultfs snapshot {args.collection}`)")
        return EXIT_OK
    header = ("VERSION", "CREATED (UTC)", "SINCE PREV", "FILES", "ADDED", "CHANGED", "REMOVED",
              "BYTES ADDED", "BANDS", "STORED", "STATE")
    table = [header]
    for r in rows:
        table.append((
            f"v{r['version']}", r["created"].replace("T", " ").rstrip("Z"),
            format_delta(r["since_previous_s"]), str(r["files"]), f"+{r['added']}",
            f"~{r['changed']}", f"-{r['removed']}", human_bytes(r["bytes_added"]),
            str(r["bands"]), human_bytes(r["bytes_stored"]), r["state"],
        ))
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    last = versions[-1]
    if last.verified_ns:
        print(f"v{last.number} verified unchanged at {iso_utc(last.verified_ns[-1])}")
    return EXIT_OK


def cmd_restore_fetch(args: argparse.Namespace, config: Config) -> int:
    from vaultfs.progress import TerminalProgress
    from vaultfs.restore import fetch
    from vaultfs.vault import Vault

    collection, number = parse_target(args.what)
    config.collection(collection)
    vault = Vault.open(config, readonly=True)
    try:
        with TerminalProgress(f"restore {args.what}", enabled=None if not args.quiet else False) as prog:
            result = fetch(vault, collection, number, args.paths, Path(args.to), prog)
    finally:
        vault.close()
    for p in result.problems:
        print(f"warning: {p.display()}", file=sys.stderr)
    code = EXIT_WARNINGS if result.problems else EXIT_OK
    if args.json:
        from vaultfs.model import to_text

        emit_json({
            "collection": collection, "version": result.version.number, "to": args.to,
            "files": result.files, "bytes": result.bytes, "dirs": result.dirs,
            "others": result.others,
            "problems": [{"path": to_text(p.path), "reason": p.reason} for p in result.problems],
            "exit_code": code,
        })
    elif not args.quiet:
        print(
            f"restored {collection}@v{result.version.number}: {result.files} files "
            f"({human_bytes(result.bytes)}), {result.dirs} directories, {result.others} other "
            f"entries into {args.to}; every file's SHA-256 verified"
        )
    return code


# ---- helpers for output ------------------------------------------------------------------


def parse_target(text: str) -> tuple[str, int | None]:
    if "@" not in text:
        return text, None
    name, _, ver = text.partition("@")
    ver = ver.removeprefix("v")
    if not ver.isdigit():
        raise ConfigError(f"{text!r}: expected COLLECTION or COLLECTION@vN, e.g. photos@v3")
    return name, int(ver)


def iso_utc(ns: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ns / 1e9))


def format_delta(seconds: float | None) -> str:
    """``+3d 4h``: the two largest units of a duration."""
    if seconds is None:
        return "-"
    s = int(seconds)
    parts: list[str] = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if s >= size or (unit == "s" and not parts):
            parts.append(f"{s // size}{unit}")
            s %= size
        if len(parts) == 2:
            break
    return "+" + " ".join(parts)


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


def emit_json(doc: dict[str, Any]) -> None:
    json.dump(doc, sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.WARNING,
        format="vaultfs: %(levelname)s: %(message)s",
    )
    func: Callable[[argparse.Namespace, Config], int] = args.func
    if os.environ.get("VAULTFS_TESTPOINTS"):
        from vaultfs import testpoints

        testpoints.configure(os.environ["VAULTFS_TESTPOINTS"])
    try:
        config = load_config(find_config(args.config))
        return func(args, config)
    except VaultError as e:
        if args.debug:
            raise
        print(f"vaultfs: error: {e.message}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("vaultfs: interrupted; the next run resumes where this one stopped", file=sys.stderr)
        return 130
    except Exception as e:
        if args.debug:
            raise
        print(
            f"vaultfs: internal error: {type(e).__name__}: {e} "
            "(run again with --debug for the traceback, and please report it)",
            file=sys.stderr,
        )
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
