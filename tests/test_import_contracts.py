"""The import contracts (pyproject.toml) are allow-lists: each one fails when a forbidden
import is added, also in a module that no contract names.

Each case copies the package, adds one import, and runs the real `lint-imports` on the
copy; the unchanged copy passes, so a failure is the added line's doing.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def _lint(tree: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"],
        cwd=tree,
        env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tree = tmp_path_factory.mktemp("pristine")
    shutil.copytree(REPO / "vaultfs", tree / "vaultfs", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tree)
    return tree


def test_the_package_as_it_is_keeps_every_contract(pristine: Path) -> None:
    result = _lint(pristine)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


CASES = [
    # (file to add the line to, the line, the contract that must break)
    ("vaultfs/mount/view.py", "import lmdb", "lmdb only under vaultfs.catalog"),
    ("vaultfs/source.py", "import pyfuse3", "pyfuse3 and trio only under vaultfs.mount"),
    ("vaultfs/mount/view.py", "import trio", "the mount's view is plain Python"),
    ("vaultfs/snapshot/brand_new.py", "import boto3", "boto3 only under vaultfs.store"),
    ("vaultfs/band/__init__.py", "from vaultfs import vault", "layers point down"),
    ("vaultfs/brand_new_module.py", "from vaultfs import errors", "layers point down"),
    ("vaultfs/hub/client.py", "from vaultfs.hub import server", "the hub's client runs the intake only"),
    ("vaultfs/hub/server.py", "from vaultfs import mount", "layers point down"),
]


@pytest.mark.parametrize(("where", "line", "contract"), CASES, ids=[f"{c[1]} in {c[0]}" for c in CASES])
def test_a_forbidden_import_breaks_its_contract(
    pristine: Path, tmp_path: Path, where: str, line: str, contract: str
) -> None:
    tree = tmp_path / "tree"
    shutil.copytree(pristine, tree)
    target = tree / where
    text = target.read_text() if target.exists() else '"""A module no contract names."""\n'
    target.write_text(text + f"\n{line}  # added by the test\n")
    result = _lint(tree)
    assert result.returncode != 0, result.stdout
    broken = [ln for ln in result.stdout.splitlines() if ln.endswith(" BROKEN")]
    assert any(ln.startswith(contract) for ln in broken), result.stdout
