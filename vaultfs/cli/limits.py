"""``--limit-upload`` and ``--limit-download``: a command's own bandwidth limits.

They take the forms of ``[vault].upload_limit`` and ``download_limit`` (a rate, "off", or
a timetable; docs/config.md) and replace those for this one run (`apply`, called by
`main` before the command runs).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported when a command runs (startup time)
    from vaultfs.config import Config

_FORMS = 'RATE such as "8MiB/s", "off", or a timetable such as "08:00,1MiB/s 23:00,off"'


def add_limit_options(parser: argparse.ArgumentParser) -> None:
    """The two options, on a command that moves bands (snapshot, restore fetch, mount)."""
    parser.add_argument(
        "--limit-upload",
        metavar="RATE",
        help=f"bandwidth limit for uploads in this run: a {_FORMS} (default: [vault].upload_limit)",
    )
    parser.add_argument(
        "--limit-download",
        metavar="RATE",
        help="bandwidth limit for downloads in this run, as --limit-upload (default: [vault].download_limit)",
    )


def apply(args: argparse.Namespace, config: Config) -> Config:
    """`config` with the limits the command line gives (ConfigError naming the option)."""
    from dataclasses import replace

    from vaultfs.config import parse_rate_schedule

    if getattr(args, "limit_upload", None) is not None:
        config = replace(config, upload_limit=parse_rate_schedule(args.limit_upload, "--limit-upload"))
    if getattr(args, "limit_download", None) is not None:
        config = replace(config, download_limit=parse_rate_schedule(args.limit_download, "--limit-download"))
    return config


def note(config: Config) -> Callable[[], str]:
    """For progress: which limit holds this process's transfers back now ("" if none);
    the limiters are the ones every store of the process shares (`vaultfs.store.limit`)."""
    from vaultfs.store.limit import shared

    return shared(config.upload_limit, config.download_limit).note
