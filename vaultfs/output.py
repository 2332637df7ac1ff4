"""Formatting shared by the command-line modules: names, sizes, times, durations, JSON."""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Callable
from typing import Any

from vaultfs.errors import ConfigError

_C_ESCAPES = {
    "\\": "\\\\",
    "\a": "\\a",
    "\b": "\\b",
    "\t": "\\t",
    "\n": "\\n",
    "\v": "\\v",
    "\f": "\\f",
    "\r": "\\r",
}
# Besides C0/C1 controls (category Cc): line and paragraph separators, and the
# bidirectional controls that reorder what a terminal shows ("Trojan Source").
_INVISIBLE = frozenset("\u2028\u2029\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def _escape_char(ch: str) -> str:
    code = ord(ch)
    if ch in _C_ESCAPES:
        return _C_ESCAPES[ch]
    if 0xDC80 <= code <= 0xDCFF:  # an undecodable byte, as surrogateescape keeps it
        return f"\\x{code - 0xDC00:02x}"
    if code < 0x20 or code == 0x7F:
        return f"\\x{code:02x}"
    if 0x80 <= code <= 0x9F or ch in _INVISIBLE or 0xD800 <= code <= 0xDFFF:
        return f"\\u{code:04x}"
    return ch


_NEEDS_ESCAPE = re.compile("[\\\\\x00-\x1f\x7f-\x9f\ud800-\udfff" + "".join(sorted(_INVISIBLE)) + "]")


def display_path(path: bytes | str) -> str:
    """A name or path from a source or the store, safe to print on one line.

    The one escaping of names in human output (docs/cli.md, "Names in output"):
    C-style, so ordinary names print unchanged and nothing a file name holds can
    end a line, move the cursor or forge another line of output. ``\\`` becomes
    ``\\\\``; ``\\n``, ``\\t``, ``\\r``, ``\\a``, ``\\b``, ``\\v``, ``\\f`` their C escapes;
    other control bytes and bytes that are not UTF-8 ``\\xNN``; C1 controls, line
    separators and bidirectional controls ``\\uNNNN``. Reading the escapes back
    gives the exact name; ``--json`` output carries exact names instead. The
    empty path (a collection's root) is shown as ``.``.
    """
    text = path.decode("utf-8", "surrogateescape") if isinstance(path, bytes) else path
    if not text:
        return "."
    if _NEEDS_ESCAPE.search(text) is None:
        return text
    return "".join(_escape_char(ch) for ch in text)


AddCommand = Callable[[str, str, str], argparse.ArgumentParser]
"""How `vaultfs.cli.main` lets a command module add a subcommand: add(name, help, description)."""


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


def add_output_options(parser: argparse.ArgumentParser, *, top: bool = False) -> None:
    """``--json``, ``--debug`` and ``-q``, accepted before the command and after it
    (``vaultfs --json snapshot`` and ``vaultfs snapshot --json``): the top parser gives
    the defaults, every subcommand's copy leaves them alone unless given."""
    default: Any = False if top else argparse.SUPPRESS
    parser.add_argument(
        "--json", action="store_true", default=default, help="print a JSON result for scripts"
    )
    parser.add_argument(
        "--debug", action="store_true", default=default, help="log details and show tracebacks"
    )
    parser.add_argument(
        "-q", "--quiet", action="store_true", default=default, help="print only warnings and errors"
    )


def add_subcommand(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], name: str, help_text: str, description: str
) -> argparse.ArgumentParser:
    """A subcommand's parser: its description shown as written, and the output options."""
    parser = sub.add_parser(
        name, help=help_text, description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_output_options(parser)
    return parser
