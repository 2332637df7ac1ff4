#!/usr/bin/env python3
"""Browse and read a backup through `vaultfs mount`, `restic mount` and `borg mount` side by side,
and against the floor of pyfuse3 + trio.

    tools/bench/mount_bench.py --data DIR --work WORKDIR [--only vaultfs,floor,restic,borg]
        [--rounds N] [--json out]

WORKDIR holds the repositories `tools/bench/run.py --data DIR --work WORKDIR` made (one
snapshot of DIR each). The benchmark runs N rounds (default 3); each round runs every selected
tool in the fixed order vaultfs, floor, restic, borg (rounds are interleaved, so slow drift of
the machine hits all tools alike). "floor" is `tools/bench/fuse_floor.py`'s mount of DIR's
shape whose handlers do nothing (find and ls -lR only): vaultfs / floor is the share of the
time that is vaultfs's own, measured on the same machine state
(`--only vaultfs,floor --rounds 5` for just that). Every measurement starts from a fresh
mount (cold: nothing in the mount's caches, nor in the kernel's dentry/attribute caches for
that mount); before each mount is started, os.sync() flushes dirty pages (not timed):

1. `find VERSION | wc -l`: wall time over one version's tree (and the entry count, which must
   be the same in every round; the output says so when it is not);
2. `ls -lR VERSION > /dev/null`: wall time (stat + xattrs of every entry);
3. time to first byte: open the second-largest file and read 1 MiB;
   then `cat` of the largest file to /dev/null, first (cold) and again (warm): MB/s;
   then the mount process's peak RSS (VmHWM).

The table shows per tool the median over rounds of the times and rates, the maximum over
rounds of the peak RSS, the min-max range of the find time and of the cold cat rate, and how
many rounds completed; the ratios against vaultfs's targets are computed from the medians.
A tool that fails in any round is reported as "failed" (and the script exits non-zero); its
other rounds, and the steps of the failed round that completed, still count.

Mounts run in the foreground as children of this script and are unmounted with
``fusermount3 -u`` (then ``-u -z``); their output is appended to WORKDIR/logs/mount-TOOL.log.
Needs fuse3 (restic), python3-llfuse (Debian's borg). Standard library only. Prints a
Markdown table and the ratios against vaultfs's targets; --json also writes the summary and
every round's results.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import max_of, median_of, min_of

REPO_ROOT = Path(__file__).resolve().parents[2]
TOOLS = ("vaultfs", "floor", "restic", "borg")
FLOOR = Path(__file__).resolve().with_name("fuse_floor.py")  # run with vaultfs's venv (pyfuse3)
MB = 1_000_000
TARGETS = (
    ("find over a version, vaultfs / restic", "find_vs_restic", "≤", 1 / 3),
    ("find over a version, vaultfs / the do-nothing floor", "find_vs_floor", "≤", 1.5),
    ("ls -lR, vaultfs / the do-nothing floor", "ls_vs_floor", "≤", 1.5),
    ("ls -lR, vaultfs / borg", "ls_vs_borg", "≤", 0.5),
    ("cat of the largest file (cold), vaultfs / borg", "cat_vs_borg", "≥", 2.5),
    ("cat of the largest file (cold), vaultfs MB/s", "vaultfs_cat_mbs", "≥", 500.0),
    (
        "cat of the largest file (warm), vaultfs MB/s (2x issue 18's 1150)",
        "vaultfs_cat_warm_mbs",
        "≥",
        2300.0,
    ),
    ("mount peak RSS, vaultfs MiB", "vaultfs_rss_mib", "≤", 100.0),
)


@dataclass
class Mount:
    name: str
    argv: list[str]
    env: dict[str, str]
    mnt: Path
    version_dir: Path  # the data directory's copy inside the mount
    proc: subprocess.Popen[bytes] | None = None


@dataclass
class Result:
    """One tool in one round."""

    tool: str
    round: int = 1
    find_s: float | None = None
    find_entries: int | None = None
    ls_s: float | None = None
    ttfb_ms: float | None = None
    cat_cold_mbs: float | None = None
    cat_warm_mbs: float | None = None
    peak_rss_mib: float | None = None
    error: str = ""
    extra: dict[str, str] = field(default_factory=dict)


def mounted(path: Path) -> bool:
    target = os.path.abspath(path)
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), line.split()[4])
            if point == target:
                return True
    return False


def start(m: Mount, log: Path, note: str) -> None:
    m.mnt.mkdir(parents=True, exist_ok=True)
    os.sync()  # untimed: earlier steps' dirty pages must not be written back on our clock
    with open(log, "ab") as out:  # the child keeps its own copy of the descriptor
        out.write(f"\n--- mount_bench: {note} ---\n".encode())
        out.flush()
        m.proc = subprocess.Popen(m.argv, env=m.env, stdout=out, stderr=out, cwd=REPO_ROOT)
    end = time.monotonic() + 120
    # Up = listed in mountinfo and its root answers; loading the version is part of what's timed.
    while not (mounted(m.mnt) and _lists(m.mnt)):
        if m.proc.poll() is not None or time.monotonic() > end:
            if m.proc.poll() is None:
                m.proc.terminate()
            raise RuntimeError(f"{m.name} mount did not come up; see {log}")
        time.sleep(0.05)


def _lists(path: Path) -> bool:
    try:
        return bool(os.listdir(path))
    except OSError:
        return False


def stop(m: Mount) -> None:
    for args in (["-u"], ["-u", "-z"]):
        if mounted(m.mnt):
            subprocess.run(["fusermount3", *args, str(m.mnt)], capture_output=True)
    if m.proc is not None:
        try:
            m.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            m.proc.kill()
            m.proc.wait()
        m.proc = None


def timed(argv: list[str] | str) -> tuple[float, str]:
    t0 = time.perf_counter()
    proc = subprocess.run(argv, shell=isinstance(argv, str), capture_output=True, text=True)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{argv} failed: {proc.stderr[-500:]}")
    return elapsed, proc.stdout


def peak_rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def largest_files(data: Path) -> tuple[str, str]:
    sizes = []
    for dirpath, _, files in os.walk(data):
        for name in files:
            p = os.path.join(dirpath, name)
            sizes.append((os.lstat(p).st_size, os.path.relpath(p, data)))
    sizes.sort(reverse=True)
    return sizes[0][1], sizes[1][1]


def make_mounts(data: Path, work: Path, mnt: Path, vaultfs: Path) -> dict[str, Mount]:
    base = dict(os.environ)
    config = work / "vaultfs.toml"
    collection = next(iter(tomllib.loads(config.read_text())["collections"]))
    rel = str(data.resolve()).lstrip("/")
    restic_env = base | {"RESTIC_PASSWORD": "bench", "RESTIC_CACHE_DIR": str(work / "restic-cache")}
    borg_env = base | {
        "BORG_BASE_DIR": str(work / "borg-home"),
        "BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK": "yes",
        "BORG_RELOCATED_REPO_ACCESS_IS_OK": "yes",
    }
    return {
        "vaultfs": Mount(
            "vaultfs",
            [str(vaultfs), "--config", str(config), "mount", "--foreground", str(mnt / "vaultfs")],
            base,
            mnt / "vaultfs",
            mnt / "vaultfs" / collection / "v1",
        ),
        "restic": Mount(
            "restic",
            ["restic", "--repo", str(work / "restic-repo"), "mount", str(mnt / "restic")],
            restic_env,
            mnt / "restic",
            mnt / "restic" / "snapshots" / "latest" / rel,
        ),
        "floor": Mount(
            "floor",
            [str(vaultfs.parent / "python"), str(FLOOR), "--data", str(data), "--serve", str(mnt / "floor")],
            base,
            mnt / "floor",
            mnt / "floor",
        ),
        "borg": Mount(
            "borg",
            ["borg", "mount", "--foreground", str(work / "borg-repo"), str(mnt / "borg")],
            borg_env,
            mnt / "borg",
            mnt / "borg" / "snap1" / rel,
        ),
    }


def bench(m: Mount, data: Path, files: tuple[str, str], log: Path, round_no: int, rounds: int) -> Result:
    r = Result(m.name, round=round_no)
    largest, second = files

    def find() -> None:
        r.find_s, out = timed(f"find '{m.version_dir}' | wc -l")
        r.find_entries = int(out.strip())

    def ls() -> None:
        r.ls_s, _ = timed(f"ls -lR '{m.version_dir}' > /dev/null")

    def read() -> None:
        t0 = time.perf_counter()
        with open(m.version_dir / second, "rb", buffering=0) as f:
            f.read(1 << 20)
        r.ttfb_ms = (time.perf_counter() - t0) * 1000
        size = (data / largest).stat().st_size
        cold, _ = timed(f"cat '{m.version_dir / largest}' > /dev/null")
        warm, _ = timed(f"cat '{m.version_dir / largest}' > /dev/null")
        r.cat_cold_mbs, r.cat_warm_mbs = size / cold / MB, size / warm / MB
        r.extra["largest"] = f"{largest} ({size / MB:.0f} MB)"
        assert m.proc is not None
        r.peak_rss_mib = peak_rss_mib(m.proc.pid)

    steps: list[tuple[str, Callable[[], None]]] = [("find", find), ("ls -lR", ls), ("read", read)]
    if m.name == "floor":
        steps = steps[:2]  # it serves no content
    for label, step in steps:
        print(f"  {m.name}: {label} ...", flush=True)
        try:
            start(m, log, f"round {round_no}/{rounds}, {label}")
            step()
        except Exception as e:
            r.error = f"{label}: {e}"
            print(f"  {m.name}: {label} failed in round {round_no}", flush=True)
            return r
        finally:
            stop(m)
    return r


# --------------------------------------------------------------------------- summarising


@dataclass
class Summary:
    """One tool over all rounds: medians of times and rates, maximum of peak RSS.

    The field names match Result's, so JSON's results[i] reads as one result. A value missing in
    a failed round is left out (None if no round has it). find_entries is None when the rounds
    counted different numbers of entries (find_entries_by_round has them all).
    """

    tool: str
    find_s: float | None
    find_entries: int | None
    ls_s: float | None
    ttfb_ms: float | None
    cat_cold_mbs: float | None
    cat_warm_mbs: float | None
    peak_rss_mib: float | None
    error: str  # "round N: step: message" of the first failed round
    extra: dict[str, str]
    rounds_ok: int
    rounds_run: int
    failed_rounds: list[int]
    find_s_min: float | None
    find_s_max: float | None
    cat_cold_mbs_min: float | None
    cat_cold_mbs_max: float | None
    find_entries_by_round: list[int | None]

    @property
    def entries_differ(self) -> bool:
        return len({n for n in self.find_entries_by_round if n is not None}) > 1


def summarise(rounds: list[Result]) -> Summary:
    failed = [r for r in rounds if r.error]
    find = [r.find_s for r in rounds]
    cold = [r.cat_cold_mbs for r in rounds]
    entries = [r.find_entries for r in rounds]
    distinct = {n for n in entries if n is not None}
    return Summary(
        tool=rounds[0].tool,
        find_s=median_of(find),
        find_entries=distinct.pop() if len(distinct) == 1 else None,
        ls_s=median_of([r.ls_s for r in rounds]),
        ttfb_ms=median_of([r.ttfb_ms for r in rounds]),
        cat_cold_mbs=median_of(cold),
        cat_warm_mbs=median_of([r.cat_warm_mbs for r in rounds]),
        peak_rss_mib=max_of([r.peak_rss_mib for r in rounds]),
        error=f"round {failed[0].round}: {failed[0].error}" if failed else "",
        extra=next((r.extra for r in rounds if r.extra), {}),
        rounds_ok=len(rounds) - len(failed),
        rounds_run=len(rounds),
        failed_rounds=[r.round for r in failed],
        find_s_min=min_of(find),
        find_s_max=max_of(find),
        cat_cold_mbs_min=min_of(cold),
        cat_cold_mbs_max=max_of(cold),
        find_entries_by_round=entries,
    )


# --------------------------------------------------------------------------- reporting


def ratios(results: dict[str, Summary]) -> dict[str, float | None]:
    """vaultfs against the others, from the medians over rounds."""
    vf, floor, restic, borg = (results.get(t) for t in TOOLS)

    def ratio(a: float | None, b: float | None) -> float | None:
        return a / b if a is not None and b else None

    return {
        "find_vs_restic": ratio(vf.find_s if vf else None, restic.find_s if restic else None),
        "find_vs_floor": ratio(vf.find_s if vf else None, floor.find_s if floor else None),
        "ls_vs_floor": ratio(vf.ls_s if vf else None, floor.ls_s if floor else None),
        "ls_vs_borg": ratio(vf.ls_s if vf else None, borg.ls_s if borg else None),
        "cat_vs_borg": ratio(vf.cat_cold_mbs if vf else None, borg.cat_cold_mbs if borg else None),
        "vaultfs_cat_mbs": vf.cat_cold_mbs if vf else None,
        "vaultfs_cat_warm_mbs": vf.cat_warm_mbs if vf else None,
        "vaultfs_rss_mib": vf.peak_rss_mib if vf else None,
    }


def fmt(v: float | None, digits: int = 2) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def fmt_range(low: float | None, high: float | None, digits: int) -> str:
    return "–" if low is None or high is None else f"{low:.{digits}f}–{high:.{digits}f}"


def markdown(results: dict[str, Summary]) -> str:
    lines = [
        "| tool | rounds ok | find s | find min–max | entries | ls -lR s | first byte ms "
        "| cat cold MB/s | cat cold min–max | cat warm MB/s | mount peak RSS MiB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in results.values():
        name = s.tool
        if s.error:
            where = ", ".join(str(n) for n in s.failed_rounds)
            why = s.error.split(": ", 1)[1][:60].replace("|", "/").replace("\n", " ")
            name = f"{s.tool} (failed in round {where}: {why})"
        if s.entries_differ:
            entries = "differ: " + "/".join("–" if n is None else str(n) for n in s.find_entries_by_round)
        else:
            entries = "–" if s.find_entries is None else str(s.find_entries)
        lines.append(
            f"| {name} | {s.rounds_ok}/{s.rounds_run} | {fmt(s.find_s)} | "
            f"{fmt_range(s.find_s_min, s.find_s_max, 2)} | {entries} | {fmt(s.ls_s)} | "
            f"{fmt(s.ttfb_ms, 1)} | {fmt(s.cat_cold_mbs, 0)} | "
            f"{fmt_range(s.cat_cold_mbs_min, s.cat_cold_mbs_max, 0)} | "
            f"{fmt(s.cat_warm_mbs, 0)} | {fmt(s.peak_rss_mib, 0)} |"
        )
    lines += ["", "| measure | value | target | met |", "|---|---:|---:|:---:|"]
    got = ratios(results)
    for label, key, op, limit in TARGETS:
        v = got[key]
        met = "n/a" if v is None else ("yes" if (v <= limit if op == "≤" else v >= limit) else "NO")
        lines.append(f"| {label} | {fmt(v)} | {op} {limit:.2f} | {met} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--only", default=",".join(TOOLS), help="comma-separated subset of: " + ", ".join(TOOLS))
    p.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="rounds of all selected tools, interleaved; the table shows medians (default 3)",
    )
    p.add_argument("--json", type=Path)
    p.add_argument("--vaultfs", type=Path, default=REPO_ROOT / ".venv" / "bin" / "vaultfs")
    args = p.parse_args(argv)
    only = [t.strip() for t in args.only.split(",") if t.strip()]
    unknown = sorted(set(only) - set(TOOLS))
    if unknown:
        p.error(f"unknown tool(s): {', '.join(unknown)}")
    if args.rounds < 1:
        p.error("--rounds must be at least 1")
    selected = [name for name in TOOLS if name in only]  # fixed order, every round alike
    mnt = args.work / "mnt"
    logs = args.work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    mounts = make_mounts(args.data, args.work, mnt, args.vaultfs)
    files = largest_files(args.data)
    per_round: list[list[Result]] = []
    for round_no in range(1, args.rounds + 1):
        print(f"round {round_no}/{args.rounds}", flush=True)
        this_round: list[Result] = []
        for name in selected:
            if name == "borg" and not shutil.which("borg"):
                this_round.append(Result(name, round=round_no, error="mount: borg not installed"))
                continue
            this_round.append(
                bench(mounts[name], args.data, files, logs / f"mount-{name}.log", round_no, args.rounds)
            )
        per_round.append(this_round)
    results = {name: summarise([rs[i] for rs in per_round]) for i, name in enumerate(selected)}
    print()
    print(
        f"{args.rounds} round(s), interleaved: medians of times and rates, maximum of peak RSS; "
        "a fresh mount per measurement, os.sync() before each mount"
    )
    print()
    print(markdown(results))
    for s in results.values():
        if s.entries_differ:
            counts = ", ".join(
                f"round {i}: {'–' if n is None else n}" for i, n in enumerate(s.find_entries_by_round, 1)
            )
            print(f"\nWARNING: {s.tool}: find counted different numbers of entries ({counts})")
    for rs in per_round:
        for r in rs:
            if r.error:
                print(f"\n{r.tool} failed in round {r.round}: {r.error}")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "results": [asdict(s) for s in results.values()],
                    "ratios": ratios(results),
                    "rounds": [[asdict(r) for r in rs] for rs in per_round],
                },
                indent=1,
            )
        )
    return 1 if any(s.error for s in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
