"""``vaultfs serve --stdio``, and the commands of a hub's client (docs/hub.md).

On the hub, ``serve --stdio --client NAME`` is the command an authorized_keys entry
forces: one client's session over stdin and stdout. On a client (a config with ``[hub]``
instead of ``[vault].store``) ``snapshot``, ``versions`` and ``restore fetch`` go through
the hub; every other command that would change or read the vault itself is refused
(`refuse_on_client`).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from vaultfs.config import Config
from vaultfs.errors import EXIT_ERROR, EXIT_OK, EXIT_WARNINGS, ConfigError, SourceRefused, UsageError
from vaultfs.output import AddCommand, emit_json, human_bytes, parse_target

ON_THE_HUB = "the hub keeps this machine's history; run it on the NAS"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], add: AddCommand) -> None:
    sp = add(
        "serve",
        "serve one hub client over stdin/stdout (run by sshd, not by hand)",
        "Serve one client machine's session over stdin and stdout: the vault side of its\n"
        "snapshots (which listings and contents are new, packing, upload, commit), its\n"
        "`versions` and its `restore fetch`. This is the command an authorized_keys entry\n"
        "on the hub forces for the client's key (docs/hub.md), as `borg serve` is:\n\n"
        '  command="vaultfs serve --stdio --client laptop",restrict ssh-ed25519 AAAA...\n\n'
        "The client's collection `home` is the hub's collection `laptop.home`: listed by\n"
        "`vaultfs versions`, mounted, kept by the keep rules and archived like any other.\n"
        "A client reaches only its own collections; a refusal, a content whose SHA-256\n"
        "does not match, a malformed frame or a client gone mid-way commits nothing and\n"
        "is written to <state_dir>/hub.log. Two clients at once: the second waits for the\n"
        "first one's commit (its user is told).\n\n"
        "Exit status: 0 the session ended well; 1 it failed (nothing uncommitted kept);\n"
        "2 the client was refused something.",
    )
    sp.add_argument("--stdio", action="store_true", required=True, help="talk over stdin and stdout")
    sp.add_argument("--client", required=True, metavar="NAME", help="the client this key belongs to")
    sp.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace, config: Config) -> int:
    from vaultfs.cli.backup import listing_json
    from vaultfs.hub.protocol import Channel
    from vaultfs.hub.server import serve
    from vaultfs.vault import Vault

    if config.hub is not None:
        raise ConfigError("this config names a [hub]: `vaultfs serve` runs on the hub, with the hub's config")
    # The frames own stdout: anything else printed there would break them.
    out = os.fdopen(os.dup(sys.stdout.fileno()), "wb", buffering=0)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    vault = Vault.open(config)
    try:
        return serve(vault, args.client, Channel(sys.stdin.buffer, out), listing_json)
    finally:
        vault.close()
        out.close()


def refuse_on_client(args: argparse.Namespace, config: Config) -> None:
    """A hub's client runs only what goes through the hub: one line for anything else."""
    if config.hub is not None and not getattr(args, "via_hub", False):
        raise UsageError(f"`vaultfs {args.command}` on a client of {config.hub.url}: {ON_THE_HUB}")


def snapshot(args: argparse.Namespace, config: Config) -> int:
    from vaultfs.hub.client import Hub, scan, send_snapshot

    assert config.hub is not None
    names = args.collections or [c.name for c in config.collections]
    if not names:
        raise ConfigError("no collections configured: add a [collections.NAME] table")
    selected = [config.collection(n) for n in names]
    docs: list[dict[str, Any]] = []
    refused: list[SourceRefused] = []
    warnings = False
    with Hub(config.hub) as hub:
        for coll in selected:
            try:
                intake = scan(config, coll)
            except SourceRefused as e:
                refused.append(e)
                print(f"vaultfs: error: {e.message}", file=sys.stderr)
                continue
            for p in intake.problems:
                print(f"warning: {coll.name}: skipped {p.display()}", file=sys.stderr)
            for kind, count in intake.not_kept.items():
                print(f"warning: {coll.name}: not kept: {count} {kind}", file=sys.stderr)
            warnings = warnings or bool(intake.problems or intake.not_kept)
            done = send_snapshot(hub, coll, os.fsencode(coll.path), intake)
            done.update(files_hashed=intake.files_read, bytes_hashed=intake.bytes_read)
            done["skipped"] = len(intake.problems)
            docs.append(done)
            if not args.json and not args.quiet:
                print(_summary(done))
        sent = hub.channel.bytes_sent
    code = EXIT_ERROR if refused else EXIT_WARNINGS if warnings else EXIT_OK
    if args.json:
        emit_json(
            {
                "collections": docs,
                "refused": [e.message for e in refused],
                "bytes_sent": sent,
                "exit_code": code,
            }
        )
    return code


def _summary(done: dict[str, Any]) -> str:
    name = done["collection"]
    latest = done.get("latest") or {}
    sent = f"hashed {done['files_hashed']} file(s), sent {done['contents_sent']} content(s) the hub lacked"
    if done["unchanged"]:
        return f"{name}: unchanged since v{latest.get('number')} on the hub (by size and times); {sent}"
    stats = latest.get("stats", {})
    return (
        f"{name}: v{done['version']} on the hub: {stats.get('files', 0)} files, +{stats.get('added', 0)} "
        f"~{stats.get('changed', 0)} -{stats.get('removed', 0)}, {human_bytes(stats.get('bytes_added', 0))} "
        f"new; {sent}"
    )


def versions(args: argparse.Namespace, config: Config) -> int:
    from vaultfs.cli.backup import print_listing
    from vaultfs.hub.client import Hub
    from vaultfs.hub.client import versions as hub_versions

    assert config.hub is not None
    if args.collection:
        config.collection(args.collection)
    with Hub(config.hub) as hub:
        docs = hub_versions(hub, args.collection)
    if args.json:
        emit_json(docs[0] if args.collection else {"collections": docs})
        return EXIT_OK
    for i, doc in enumerate(docs):
        print_listing(doc, i, single=bool(args.collection))
    if not docs and not args.collection:
        print(f"no versions on the hub {config.hub.url} yet (run `vaultfs snapshot`)")
    return EXIT_OK


def fetch(args: argparse.Namespace, config: Config) -> int:
    from vaultfs.cli.restore import report_fetch
    from vaultfs.hub.client import Hub
    from vaultfs.hub.client import fetch as hub_fetch
    from vaultfs.progress import TerminalProgress

    assert config.hub is not None
    collection, number = parse_target(args.what)
    config.collection(collection)
    with (
        Hub(config.hub) as hub,
        TerminalProgress(f"restore {args.what}", enabled=None if not args.quiet else False) as prog,
    ):
        result = hub_fetch(hub, collection, number, args.paths, Path(args.to), prog, overwrite=args.overwrite)
    return report_fetch(args, collection, result)
