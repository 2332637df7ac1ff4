"""The ``vaultfs`` command line: the parser, config lookup, exit codes.

Each command group lives in its own module of this package (`backup`, `restore`,
`mount`, `index`, `scrub`, `retention`, `explain`, `hub`), which registers its
subcommands and prints their output. This is the only module that reads the environment
or decides which config file to use. Errors the user can fix (`VaultError`) print one line and exit
with their code; anything else is a bug and shows a traceback with --debug
(or a one-line "internal error" without it).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from vaultfs import __version__
from vaultfs.cli import limits
from vaultfs.errors import (
    EXIT_ERROR,
    EXIT_READER_GONE,
    EXIT_USAGE,
    ConfigError,
    VaultError,
)
from vaultfs.output import add_output_options, add_subcommand

if TYPE_CHECKING:  # imported once the command line is parsed (startup time)
    from vaultfs.config import Config

DESCRIPTION = """\
vaultfs backs up collections of files (photos, media, source code) from a NAS
to S3 or a local directory as large compressed archives ("bands"), keeps every
version, moves cold data to Glacier Deep Archive, and mounts every version
read-only with FUSE.

The configuration is read from --config FILE, else $VAULTFS_CONFIG, else
~/.config/vaultfs/vault.toml, else /etc/vaultfs/vault.toml (see docs/config.md).

exit status (every command's: docs/cli.md):
  0  success
  1  error: nothing was committed by the step that failed
  2  usage or configuration error: a bad command line or config, a collection,
     version or path that does not exist, a store that refuses us as configured
     (endpoint, bucket, credentials)
  3  finished, with warnings: files were skipped, metadata was not kept
     (snapshot's `not kept:` lines) or not restored (restore fetch's
     `metadata not restored:`, --json "not_restored"), or cold data changed
  4  bit rot found by scrub or a snapshot's scrub slice: a file has its
     version's size and mtime but other bytes (the report says how to get the
     good copy back)
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


def git_excludes_default() -> Path | None:
    """git's default ``core.excludesFile`` when none is configured, from the environment as
    git derives it (gitignore(5)): ``$XDG_CONFIG_HOME/git/ignore``, else
    ``$HOME/.config/git/ignore`` (an empty variable counts as unset); None without either.
    A configured ``core.excludesFile`` is asked of git itself (`vaultfs.ignore.git`)."""
    xdg = os.environ.get("XDG_CONFIG_HOME")
    if xdg:
        return Path(xdg) / "git" / "ignore"
    home = os.environ.get("HOME")
    return Path(home) / ".config" / "git" / "ignore" if home else None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="vaultfs",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"vaultfs {__version__}")
    p.add_argument("--config", metavar="FILE", help="configuration file (TOML)")
    add_output_options(p, top=True)
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    def add(name: str, help_text: str, description: str) -> argparse.ArgumentParser:
        return add_subcommand(sub, name, help_text, description)

    # One module per command group, each owning its commands' code (and --help order).
    from vaultfs.cli import backup as cli_backup
    from vaultfs.cli import explain as cli_explain
    from vaultfs.cli import hub as cli_hub
    from vaultfs.cli import index as cli_index
    from vaultfs.cli import mount as cli_mount
    from vaultfs.cli import restore as cli_restore
    from vaultfs.cli import retention as cli_retention
    from vaultfs.cli import scrub as cli_scrub

    for group in (
        cli_backup,
        cli_explain,
        cli_restore,
        cli_mount,
        cli_index,
        cli_scrub,
        cli_retention,
        cli_hub,
    ):
        group.register(sub, add)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        _trailing_paths(parser, args, extra)
    # Imported only now: --version, --help and usage errors exit without them (start-up time).
    import logging
    from dataclasses import replace

    from vaultfs import logsafe
    from vaultfs.config import load_config

    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.WARNING,
        format="vaultfs: %(levelname)s: %(message)s",
    )
    logsafe.install()  # no credential in any line, --debug or not
    func: Callable[[argparse.Namespace, Config], int] = args.func
    if os.environ.get("VAULTFS_TESTPOINTS"):  # the one test hook (vaultfs/testpoints.py)
        from vaultfs import testpoints

        try:
            testpoints.configure(os.environ["VAULTFS_TESTPOINTS"])
        except ValueError as e:
            print(f"vaultfs: error: {e}", file=sys.stderr)
            return EXIT_USAGE
    try:
        config = replace(load_config(find_config(args.config)), git_excludes_default=git_excludes_default())
        from vaultfs.cli.hub import refuse_on_client

        refuse_on_client(args, config)
        config = limits.apply(args, config)
        status = func(args, config)
        sys.stdout.flush()  # a reader that went away fails here, not at exit
        return status
    except BrokenPipeError:
        return _reader_gone()
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


def _trailing_paths(parser: argparse.ArgumentParser, args: argparse.Namespace, extra: list[str]) -> None:
    """PATHs after an option (`restore fetch photos --to DIR a.jpg b.jpg`): argparse fills
    a command's PATH list before the options and then calls the rest unrecognized; they are
    PATHs, as restic and git take them. Anything else left over is the usual usage error."""
    if isinstance(getattr(args, "paths", None), list) and not any(e.startswith("-") for e in extra):
        args.paths += extra
        return
    parser.error(f"unrecognized arguments: {' '.join(extra)}")


def _reader_gone() -> int:
    """The reader of our output left (``vaultfs versions | head``): stop quietly.

    Like ``cat`` and ``git``, a pipe reader that has read enough is not an error worth a
    message; the status is the shell's for a process killed by SIGPIPE (128 + 13), so a
    script can still tell the output was cut short. stdout is pointed at /dev/null so the
    interpreter's own flush at exit does not raise again.
    """
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return EXIT_READER_GONE
