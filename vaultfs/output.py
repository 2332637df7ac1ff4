"""Formatting shared by the command-line modules: sizes, times, durations, JSON."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from typing import Any

from vaultfs.errors import ConfigError

AddCommand = Callable[[str, str, str], argparse.ArgumentParser]
"""How cli.py lets a command module add a subcommand: add(name, help, description)."""


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
