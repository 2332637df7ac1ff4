"""What a command imports before it runs: the start-up every command pays.

`vaultfs.cli.main` builds the whole parser (every command group's options) before it knows
the command, so the group modules import their commands' code inside the commands; and
`vaultfs.band` loads each of its modules on first use of one of its names, so a reader does
not load the writer. Each test runs a fresh interpreter: a module imported by an earlier
test would hide a regression.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _modules_after(code: str) -> set[str]:
    """The modules a fresh interpreter holds after running `code`."""
    proc = subprocess.run(
        [sys.executable, "-c", f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=True,
        timeout=60,
    )
    return set(json.loads(proc.stdout.splitlines()[-1]))


def test_the_parser_is_built_without_any_command_code() -> None:
    """`--version`, `--help` and usage errors: no config, data model or vault code, nor the
    stdlib modules only the commands need (each of these is milliseconds of start-up)."""
    loaded = _modules_after("from vaultfs.cli.main import build_parser\nbuild_parser()")
    assert "vaultfs.cli.restore" in loaded and "vaultfs.cli.retention" in loaded  # the groups are there
    heavy = {
        "vaultfs.config",
        "vaultfs.model",
        "vaultfs.vault",
        "vaultfs.store",
        "vaultfs.catalog",
        "vaultfs.band",
        "tomllib",
        "dataclasses",
        "logging",
        "socket",
    }
    assert loaded & heavy == set()


def test_the_band_package_loads_its_modules_on_first_use() -> None:
    loaded = _modules_after("from vaultfs.band import BandReader")
    assert "vaultfs.band.reader" in loaded
    assert loaded & {"vaultfs.band.writer", "vaultfs.band.scan", "vaultfs.band.salvage"} == set()


def test_every_name_of_the_band_package_is_its_module_s_own() -> None:
    """`vaultfs.band.__all__` and the map that loads the names at run time agree, and each
    name is its module's object (mypy checks the TYPE_CHECKING imports against `__all__`)."""
    band = importlib.import_module("vaultfs.band")
    assert sorted(band.__all__) == sorted(band._HOME)
    for name, module in band._HOME.items():
        assert getattr(band, name) is getattr(importlib.import_module(f"vaultfs.band.{module}"), name)
    with pytest.raises(AttributeError, match="no attribute 'BandWritter'"):
        band.BandWritter  # noqa: B018
