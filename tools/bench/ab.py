"""Compare two versions of vaultfs on the same data, alternating them: A, B, A, B, …

    tools/bench/ab.py --data DIR --work WORKDIR [--rounds N] REV_A [REV_B]

Each REV is a git revision of this repository (exported with ``git archive`` into
WORKDIR) or ``WORKTREE`` for the files as they are now; REV_B defaults to WORKTREE.
Every round, for each version in turn: a fresh file:// store, the page cache warmed
with tar, ``os.sync()``, a first snapshot and a no-change snapshot, each timed with
its peak RSS (as in run.py). The machine's speed drifts by ±10 % between minutes, so
a change worth less than that shows only in alternating runs like these; the table
gives the medians, the min–max and B's median over A's.

Both versions run with this checkout's virtualenv (its dependencies) and their own
``vaultfs`` package first on PYTHONPATH.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import MIB, REPO_ROOT, data_and_work, du_bytes, run_measured, warm_page_cache

WORKTREE = "WORKTREE"


@dataclass
class Variant:
    label: str
    tree: Path  # holds the `vaultfs` package
    first_s: list[float] = field(default_factory=list)
    nochange_s: list[float] = field(default_factory=list)
    rss_mib: list[float] = field(default_factory=list)
    store_mib: list[float] = field(default_factory=list)


def export(rev: str, dest: Path) -> Path:
    """The `vaultfs` package of `rev` (or of the working tree) under `dest`."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    if rev == WORKTREE:
        shutil.copytree(REPO_ROOT / "vaultfs", dest / "vaultfs", ignore=shutil.ignore_patterns("__pycache__"))
        return dest
    archive = subprocess.run(
        ["git", "-C", str(REPO_ROOT), "archive", rev, "vaultfs"], capture_output=True, check=False
    )
    if archive.returncode != 0:
        raise SystemExit(f"git archive {rev}: {archive.stderr.decode().strip()}")
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    return dest


def variant_env(v: Variant) -> dict[str, str]:
    """Bytecode caching on (as for users); `-P` keeps the working directory off sys.path,
    so the variant's package, first on PYTHONPATH, is the one imported."""
    env = {k: val for k, val in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPATH"] = str(v.tree)
    return env


def check_imports(v: Variant) -> None:
    out = subprocess.run(
        [sys.executable, "-P", "-c", "import vaultfs; print(vaultfs.__file__)"],
        capture_output=True,
        text=True,
        env=variant_env(v),
        check=True,
    ).stdout.strip()
    if not Path(out).is_relative_to(v.tree):
        raise SystemExit(f"{v.label}: imports vaultfs from {out}, not from {v.tree}")


def one_round(v: Variant, data: Path, work: Path) -> None:
    base = work / f"run-{v.label}"
    if base.exists():
        shutil.rmtree(base)
    base.mkdir(parents=True)
    config = base / "vaultfs.toml"
    config.write_text(
        "[vault]\n"
        f'store = "{(base / "store").as_uri()}"\n'
        f'state_dir = "{base / "state"}"\n\n'
        "[collections.bench]\n"
        f'path = "{data}"\n'
        'tier = "cold"\n'
    )
    env = variant_env(v)
    cmd = [sys.executable, "-P", "-m", "vaultfs.cli", "--config", str(config)]
    init = run_measured([*cmd, "init"], env, base / "init.log")
    if init.returncode != 0:
        raise SystemExit(f"{v.label}: init failed:\n{init.stderr_tail}")
    warm_page_cache(data)
    results = []
    for step in ("first", "nochange"):
        os.sync()
        m = run_measured([*cmd, "snapshot"], env, base / f"{step}.log")
        if m.returncode not in (0, 3):
            raise SystemExit(f"{v.label}: {step} snapshot failed:\n{m.stderr_tail}")
        results.append(m)
    first, nochange = results
    v.first_s.append(first.wall_s)
    v.nochange_s.append(nochange.wall_s)
    v.rss_mib.append(max((m.peak_rss_kib or 0) for m in results) / 1024)
    v.store_mib.append(du_bytes(base / "store") / MIB)
    print(
        f"  {v.label}: first {first.wall_s:.2f} s, no-change {nochange.wall_s:.2f} s, "
        f"peak RSS {v.rss_mib[-1]:.1f} MiB",
        flush=True,
    )


def _cell(values: list[float], digits: int) -> str:
    return f"{statistics.median(values):.{digits}f} ({min(values):.{digits}f}–{max(values):.{digits}f})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="directory to back up")
    parser.add_argument(
        "--work", type=Path, required=True, help="where the exported versions, stores and logs go"
    )
    parser.add_argument("--rounds", type=int, default=3, help="A/B pairs to run (default 3)")
    parser.add_argument("rev_a", metavar="REV_A", help="git revision, or WORKTREE")
    parser.add_argument(
        "rev_b", metavar="REV_B", nargs="?", default=WORKTREE, help="git revision, or WORKTREE (the default)"
    )
    args = parser.parse_args(argv)
    data, work = data_and_work(parser, args.data, args.work)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    variants = [Variant("A", export(args.rev_a, work / "A")), Variant("B", export(args.rev_b, work / "B"))]
    for v in variants:
        check_imports(v)
    for n in range(1, args.rounds + 1):
        print(f"round {n}/{args.rounds}", flush=True)
        for v in variants:
            one_round(v, data, work)
    a, b = variants
    print()
    print(f"A = {args.rev_a}, B = {args.rev_b}; medians (min–max) of {args.rounds} rounds")
    print()
    print("| measure | A | B | B / A |")
    print("|---|---:|---:|---:|")
    for label, attr, digits in (
        ("first snapshot s", "first_s", 2),
        ("no-change snapshot s", "nochange_s", 3),
        ("peak RSS MiB", "rss_mib", 1),
        ("store MiB", "store_mib", 1),
    ):
        va, vb = getattr(a, attr), getattr(b, attr)
        ratio = statistics.median(vb) / statistics.median(va)
        print(f"| {label} | {_cell(va, digits)} | {_cell(vb, digits)} | {ratio:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
