#!/usr/bin/env python3
"""Browse and read a backup through `vaultfs mount`, `restic mount` and `borg mount` side by side.

    tools/bench/mount_bench.py --data DIR --work WORKDIR [--only vaultfs,restic,borg] [--json out]

WORKDIR holds the repositories `tools/bench/run.py --data DIR --work WORKDIR` made (one
snapshot of DIR each). Every measurement starts from a fresh mount (cold: nothing in the
mount's caches, nor in the kernel's dentry/attribute caches for that mount):

1. `find VERSION | wc -l`: wall time over one version's tree;
2. `ls -lR VERSION > /dev/null`: wall time (stat + xattrs of every entry);
3. time to first byte: open the second-largest file and read 1 MiB;
   then `cat` of the largest file to /dev/null, first (cold) and again (warm): MB/s;
   then the mount process's peak RSS (VmHWM).

Mounts run in the foreground as children of this script and are unmounted with
``fusermount3 -u`` (then ``-u -z``). Needs fuse3 (restic), python3-llfuse (Debian's borg).
Standard library only. Prints a Markdown table and the ratios against vaultfs's targets.
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

REPO_ROOT = Path(__file__).resolve().parents[2]
TOOLS = ("vaultfs", "restic", "borg")
MB = 1_000_000
TARGETS = (
    ("find over a version, vaultfs / restic", "find_vs_restic", "≤", 1 / 3),
    ("ls -lR, vaultfs / borg", "ls_vs_borg", "≤", 0.5),
    ("cat of the largest file (cold), vaultfs / borg", "cat_vs_borg", "≥", 2.5),
    ("cat of the largest file (cold), vaultfs MB/s", "vaultfs_cat_mbs", "≥", 500.0),
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
    tool: str
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


def start(m: Mount, log: Path) -> None:
    m.mnt.mkdir(parents=True, exist_ok=True)
    out = open(log, "ab")  # noqa: SIM115 - closed with the process
    m.proc = subprocess.Popen(m.argv, env=m.env, stdout=out, stderr=out, cwd=REPO_ROOT)
    end = time.monotonic() + 120
    # Up = listed in mountinfo and its root answers; loading the version is part of what's timed.
    while not (mounted(m.mnt) and _lists(m.mnt)):
        if m.proc.poll() is not None or time.monotonic() > end:
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
    borg_env = base | {"BORG_BASE_DIR": str(work / "borg-home"),
                       "BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK": "yes",
                       "BORG_RELOCATED_REPO_ACCESS_IS_OK": "yes"}
    return {
        "vaultfs": Mount("vaultfs", [str(vaultfs), "--config", str(config), "mount", "--foreground",
                                     str(mnt / "vaultfs")], base, mnt / "vaultfs",
                         mnt / "vaultfs" / collection / "v1"),
        "restic": Mount("restic", ["restic", "--repo", str(work / "restic-repo"), "mount",
                                   str(mnt / "restic")], restic_env, mnt / "restic",
                        mnt / "restic" / "snapshots" / "latest" / rel),
        "borg": Mount("borg", ["borg", "mount", "--foreground", str(work / "borg-repo"),
                               str(mnt / "borg")], borg_env, mnt / "borg",
                      mnt / "borg" / "snap1" / rel),
    }


def bench(m: Mount, data: Path, log: Path) -> Result:
    r = Result(m.name)
    largest, second = largest_files(data)

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
    for label, step in steps:
        print(f"  {m.name}: {label} ...", flush=True)
        start(m, log)
        try:
            step()
        except Exception as e:
            r.error = f"{label}: {e}"
            return r
        finally:
            stop(m)
    return r


def ratios(results: dict[str, Result]) -> dict[str, float | None]:
    vf, restic, borg = (results.get(t) for t in TOOLS)

    def ratio(a: float | None, b: float | None) -> float | None:
        return a / b if a is not None and b else None

    return {
        "find_vs_restic": ratio(vf and vf.find_s, restic and restic.find_s),
        "ls_vs_borg": ratio(vf and vf.ls_s, borg and borg.ls_s),
        "cat_vs_borg": ratio(vf and vf.cat_cold_mbs, borg and borg.cat_cold_mbs),
        "vaultfs_cat_mbs": vf.cat_cold_mbs if vf else None,
    }


def fmt(v: float | None, digits: int = 2) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def markdown(results: dict[str, Result]) -> str:
    lines = ["| tool | find s (entries) | ls -lR s | first byte ms | cat cold MB/s | cat warm MB/s "
             "| mount peak RSS MiB |", "|---|---:|---:|---:|---:|---:|---:|"]
    for r in results.values():
        if r.error:
            lines.append(f"| {r.tool} (failed: {r.error[:60]}) | – | – | – | – | – | – |")
            continue
        lines.append(f"| {r.tool} | {fmt(r.find_s)} ({r.find_entries}) | {fmt(r.ls_s)} | "
                     f"{fmt(r.ttfb_ms, 1)} | {fmt(r.cat_cold_mbs, 0)} | {fmt(r.cat_warm_mbs, 0)} | "
                     f"{fmt(r.peak_rss_mib, 0)} |")
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
    p.add_argument("--only", default=",".join(TOOLS))
    p.add_argument("--json", type=Path)
    p.add_argument("--vaultfs", type=Path, default=REPO_ROOT / ".venv" / "bin" / "vaultfs")
    args = p.parse_args(argv)
    mnt = args.work / "mnt"
    logs = args.work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    mounts = make_mounts(args.data, args.work, mnt, args.vaultfs)
    results: dict[str, Result] = {}
    for name in args.only.split(","):
        if name == "borg" and not shutil.which("borg"):
            results[name] = Result(name, error="borg not installed")
            continue
        results[name] = bench(mounts[name], args.data, logs / f"mount-{name}.log")
    table = markdown(results)
    print(table)
    if args.json:
        args.json.write_text(json.dumps({"results": [asdict(r) for r in results.values()],
                                         "ratios": ratios(results)}, indent=1))
    return 1 if any(r.error for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
