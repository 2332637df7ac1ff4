"""``vaultfs explain``: whether a snapshot keeps a path of a collection's source, and which
rule decides (docs/config.md, "What a collection leaves out")."""

from __future__ import annotations

import argparse
import os
import stat
import sys
from typing import TYPE_CHECKING, Any

from vaultfs.errors import EXIT_OK, EXIT_USAGE
from vaultfs.output import AddCommand, display_path, emit_json

if TYPE_CHECKING:  # imported when a command runs (startup time)
    from vaultfs.config import Config


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], add: AddCommand) -> None:
    sp = add(
        "explain",
        "say whether a snapshot keeps each path, and which rule decides",
        "For each PATH under the collection's source (relative to its path, or absolute),\n"
        "say whether the next snapshot keeps it or leaves it out, and by which rule: the\n"
        "collection's exclude, exclude_if_present or exclude_larger_than, or a line of a\n"
        '.gitignore, .git/info/exclude or core.excludesFile (file:line "pattern"). A file git\n'
        "tracks is kept even when a pattern matches it, and explain says so. The rules are\n"
        "applied exactly as a snapshot applies them; nothing is written.\n\n"
        "Exit status 2: a PATH does not exist or is outside the collection (the others are\n"
        "still explained).",
    )
    sp.add_argument("collection", metavar="COLLECTION")
    sp.add_argument("paths", nargs="+", metavar="PATH")
    sp.set_defaults(func=cmd_explain, via_hub=True)  # the rules are the client's own


def cmd_explain(args: argparse.Namespace, config: Config) -> int:
    from vaultfs.ignore import Rules, describe

    collection = config.collection(args.collection)
    rules = Rules(collection, config.git_excludes_default)
    rows: list[dict[str, Any]] = []
    errors: list[str] = []
    for arg in args.paths:
        rel = _relative(os.fsencode(collection.path), os.fsencode(arg))
        if rel is None:
            root = display_path(str(collection.path))
            errors.append(f"{display_path(arg)}: not under {root} (give a path relative to it, or under it)")
            continue
        try:
            verdict = rules.explain(rel)
            is_dir = stat.S_ISDIR(os.lstat(os.fsencode(collection.path) + b"/" + rel).st_mode)
        except OSError as e:
            errors.append(f"{display_path(rel)}: {e.strerror or e}")
            continue
        shown = display_path(rel) + ("/" if is_dir and rel else "")
        rule = verdict.rule
        rows.append(
            {
                "path": os.fsdecode(rel),
                "kept": verdict.kept,
                "reason": verdict.reason,
                "rule": None
                if rule is None
                else {"file": rule.source, "line": rule.line, "pattern": rule.text, "negated": rule.negated},
                "inside": None if verdict.inside is None else os.fsdecode(verdict.inside),
                "detail": verdict.detail,
                "text": f"{shown} — {describe(verdict)}",
            }
        )
    code = EXIT_USAGE if errors else EXIT_OK
    if args.json:
        emit_json({"collection": collection.name, "paths": rows, "errors": errors, "notes": rules.notes})
        return code
    for row in rows:
        print(row["text"])
    for note in rules.notes:
        print(f"note: {collection.name}: {note}", file=sys.stderr)
    for error in errors:
        print(f"vaultfs: error: {error}", file=sys.stderr)
    return code


def _relative(root: bytes, path: bytes) -> bytes | None:
    """`path` relative to the collection root (given relative to it, or absolute under it;
    b"" for the root itself); None for a path outside it."""
    if os.path.isabs(path):
        path = os.path.relpath(os.path.normpath(path), root)
    path = os.path.normpath(path)
    if path == b".." or path.startswith(b"../"):
        return None
    return b"" if path == b"." else path
