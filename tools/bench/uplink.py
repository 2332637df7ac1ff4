"""A slow uplink: ``compression_level = "auto"`` against fixed level 3 (issue 16).

    tools/bench/uplink.py --data DIR --work WORKDIR --store-dir DIR_ON_ANOTHER_FS
        [--limit 8MiB/s] [--rounds N] [--json out.json]

Each round, alternating the two levels (level 3, then "auto"): a fresh ``file://`` store
under ``--store-dir`` and a fresh state directory, the page cache warmed with tar,
``os.sync()``, then a first snapshot with ``--limit-upload LIMIT``, timed. The store must
be on another filesystem than WORKDIR: a store on the spool's filesystem takes each band
as a hard link, which sends nothing and is not limited (the script refuses it). With
``--limit off`` the same comparison measures that "auto" costs nothing when the upload
is not the bound.

Per level it reports the medians over rounds of:

* wall time of the snapshot, and **link time**: the bytes stored at the limit (what the
  link alone needs); wall / link near 1 means the link was the bound all along;
* **upload busy**: the share of the wall time the uploader spent sending bands (the
  snapshot's ``upload_seconds``): the link waited for compression the rest of the time;
* store size (du) and the zstd levels used (the snapshot's ``compression_levels``);

and "auto" against level 3: store size and wall time (the issue's targets: a smaller
store, the same wall time within 10 %; unthrottled, within noise).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import MIB, REPO_ROOT, data_and_work, du_bytes, run_measured, warm_page_cache

LEVELS = (("level 3", "3"), ("auto", '"auto"'))


@dataclass
class Runs:
    label: str
    wall_s: list[float] = field(default_factory=list)
    upload_s: list[float] = field(default_factory=list)
    store_bytes: list[int] = field(default_factory=list)
    stored_bytes: list[int] = field(default_factory=list)
    levels: list[list[int] | None] = field(default_factory=list)


def rate_bytes(limit: str) -> float | None:
    """Bytes per second of a plain rate such as "8MiB/s" (None: "off"); timetables are
    not for this benchmark."""
    sys.path.insert(0, str(REPO_ROOT))
    from vaultfs.config import parse_rate_schedule

    schedule = parse_rate_schedule(limit, "--limit")
    if len(schedule.entries) > 1:
        raise SystemExit("--limit: give one rate (or off), not a timetable")
    return float(schedule.entries[0][1]) if schedule.entries and schedule.entries[0][1] else None


def write_config(data: Path, state: Path, store: Path, level: str) -> Path:
    config = state.parent / f"{state.name}.toml"
    config.write_text(
        "[vault]\n"
        f"store = {json.dumps(store.as_uri())}\n"
        f"state_dir = {json.dumps(str(state))}\n"
        f"compression_level = {level}\n"
        "\n[collections.bench]\n"
        f"path = {json.dumps(str(data))}\n"
    )
    return config


def one_run(data: Path, work: Path, store_root: Path, level: str, limit: str, n: int) -> dict[str, Any]:
    """A first snapshot into a fresh vault at `level` with `limit`; its --json report and wall time."""
    state, store = work / f"state-{n}", store_root / f"store-{n}"
    shutil.rmtree(state, ignore_errors=True)
    shutil.rmtree(store, ignore_errors=True)
    config = write_config(data, state, store, level)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    vaultfs = [sys.executable, "-m", "vaultfs.cli", "--config", str(config)]
    init = run_measured([*vaultfs, "init"], env, work / "logs" / f"init-{n}.log")
    if init.returncode != 0:
        raise SystemExit(f"vaultfs init failed:\n{init.stderr_tail}")
    warm_page_cache(data)
    os.sync()
    log = work / "logs" / f"snapshot-{n}.log"
    snap = run_measured([*vaultfs, "snapshot", "--json", "--limit-upload", limit], env, log)
    if snap.returncode not in (0, 3):
        raise SystemExit(f"vaultfs snapshot failed:\n{snap.stderr_tail}")
    report = json.loads(log.read_text())["collections"][0]
    report["wall_s"] = snap.wall_s
    report["store_du"] = du_bytes(store)
    shutil.rmtree(state, ignore_errors=True)
    shutil.rmtree(store, ignore_errors=True)
    return dict(report)


def table(runs: list[Runs], link_rate: float | None) -> str:
    lines = [
        "| level | wall s | link s | wall/link | upload busy | store MiB | levels used |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in runs:
        wall = statistics.median(r.wall_s)
        link = statistics.median(r.stored_bytes) / link_rate if link_rate else None
        busy = statistics.median(u / w for u, w in zip(r.upload_s, r.wall_s, strict=True))
        used = sorted({tuple(x) for x in r.levels if x})
        lines.append(
            f"| {r.label} | {wall:.1f} | {'-' if link is None else f'{link:.1f}'} | "
            f"{'-' if link is None else f'{wall / link:.2f}'} | {busy:.0%} | "
            f"{statistics.median(r.store_bytes) / MIB:.1f} | {', '.join(f'{a}-{b}' for a, b in used)} |"
        )
    three, auto = runs
    store = statistics.median(auto.store_bytes) / statistics.median(three.store_bytes)
    wall = statistics.median(auto.wall_s) / statistics.median(three.wall_s)
    lines.append(f"\nauto / level 3: store {store:.3f}, wall {wall:.3f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="directory to back up")
    parser.add_argument("--work", type=Path, required=True, help="state directories and logs")
    parser.add_argument("--store-dir", type=Path, required=True, help="stores, on another filesystem")
    parser.add_argument("--limit", default="8MiB/s", help="upload limit (default 8MiB/s; off: none)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    data, work = data_and_work(parser, args.data, args.work)
    work.mkdir(parents=True, exist_ok=True)
    args.store_dir.mkdir(parents=True, exist_ok=True)
    if os.stat(args.store_dir).st_dev == os.stat(work).st_dev:
        parser.error("--store-dir must be on another filesystem than --work (a hard link sends nothing)")
    link_rate = rate_bytes(args.limit)
    runs = [Runs(label) for label, _ in LEVELS]
    n = 0
    for _ in range(args.rounds):
        for r, (_, level) in zip(runs, LEVELS, strict=True):
            n += 1
            report = one_run(data, work, args.store_dir, level, args.limit, n)
            r.wall_s.append(float(report["wall_s"]))
            r.upload_s.append(float(report["upload_seconds"]))
            r.store_bytes.append(int(report["store_du"]))
            r.stored_bytes.append(int(report["bytes_stored"]))
            r.levels.append(report["compression_levels"])
            print(f"{r.label}: {report['wall_s']:.1f} s, {report['bytes_stored'] / MIB:.1f} MiB", flush=True)
    print(f"\nupload limit {args.limit}, {args.rounds} round(s), medians\n")
    print(table(runs, link_rate))
    if args.json:
        args.json.write_text(json.dumps({"limit": args.limit, "runs": [asdict(r) for r in runs]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
