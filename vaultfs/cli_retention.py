"""Subcommands registered by `vaultfs.cli` (placeholder: being written)."""

from __future__ import annotations

import argparse
from collections.abc import Callable

AddCommand = Callable[[str, str, str], argparse.ArgumentParser]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], add: AddCommand) -> None:
    """Add this module's subcommands; `add(name, help, description)` makes a parser with --json."""
