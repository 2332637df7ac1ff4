"""The keep rules of forget (docs/retention.md, "The keep rules"): keep_within, keep_daily,
keep_weekly, keep_monthly, keep_yearly beside keep_versions, on the command line and in the
config, on histories of versions made at chosen times (``snapshot-clock`` of
VAULTFS_TESTPOINTS: each ``vaultfs snapshot`` creates its version at the instant given)."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.test_init import one_line_error
from tests.trees import write
from tests.vaultenv import VaultEnv
from vaultfs.config import KeepPolicy
from vaultfs.model import TreeId, VersionInfo
from vaultfs.retention import kept_by_rules

# A history across a day boundary (v6/v7, one second apart around midnight UTC) and an
# ISO week boundary (v2 is Sunday of week 8, v3 Monday of week 9).
HISTORY = [
    "2024-02-20T10:00:00Z",  # v1  Tue, 2024-W08
    "2024-02-25T23:30:00Z",  # v2  Sun, 2024-W08
    "2024-02-26T00:30:00Z",  # v3  Mon, 2024-W09
    "2024-03-01T09:00:00Z",  # v4  Fri, 2024-W09
    "2024-03-01T18:00:00Z",  # v5  Fri, 2024-W09 (same day as v4, later)
    "2024-03-03T23:59:59Z",  # v6  Sun, 2024-W09
    "2024-03-04T00:00:01Z",  # v7  Mon, 2024-W10
    "2024-03-04T12:00:00Z",  # v8  Mon, 2024-W10 (the latest)
]


def snapshot_at(env: VaultEnv, when: str, src: Path, expect: int = 0) -> None:
    """One more file in `src`, and a snapshot whose version is created at `when` (UTC)."""
    write(src / f"{when[:19].replace(':', '-')}.txt", when.encode())
    env.run("snapshot", expect=expect, env=env.env(VAULTFS_TESTPOINTS=f"snapshot-clock={when}"))


def reasons(collection: dict[str, Any]) -> dict[int, list[str]]:
    """Version → its reasons as the text output spells them, for the versions kept."""
    return {
        v["version"]: [r["rule"] + (f" ({r['period']})" if r["period"] else "") for r in v["reasons"]]
        for v in collection["versions"]
        if v["kept"]
    }


def test_keep_daily_and_weekly_on_a_chosen_history(file_vault: VaultEnv) -> None:
    src = file_vault.add_collection("code", tier="warm")
    file_vault.run("init")
    for when in HISTORY:
        snapshot_at(file_vault, when, src)
    created = [v["created"] for v in file_vault.versions("code")]
    assert created == HISTORY  # the hook made each version at its instant

    # Days and weeks are UTC whatever the process's time zone: in Tokyo (UTC+9) v6 and v7
    # would share Monday 2024-03-04 and v5 would not be kept.
    tokyo = file_vault.env(TZ="Asia/Tokyo")
    args = ("forget", "code", "--keep-daily", "3", "--keep-weekly", "2", "--dry-run")
    [code] = json.loads(file_vault.run(*args, "--json", env=tokyo).stdout)["collections"]
    assert code["policy"] == {"keep_daily": 3, "keep_weekly": 2}
    assert code["kept"] == [5, 6, 8] and code["forgotten"] == [1, 2, 3, 4, 7]
    assert reasons(code) == {
        5: ["keep_daily (2024-03-01)"],
        6: ["keep_daily (2024-03-03)", "keep_weekly (2024-W09)"],
        8: ["latest", "keep_daily (2024-03-04)", "keep_weekly (2024-W10)"],
    }
    text = file_vault.run(*args, env=tokyo).stdout
    assert "code: would forget 5 version(s) v1, v2, v3, v4, v7; keeping 3 (v5, v6, v8)" in text
    assert "v6  2024-03-03T23:59:59Z  keep_daily (2024-03-03), keep_weekly (2024-W09)" in text
    assert [v["version"] for v in file_vault.versions("code")] == list(range(1, 9))  # a dry run

    def kept(*options: str) -> dict[int, list[str]]:
        [c] = file_vault.json("forget", "code", *options, "--dry-run")["collections"]
        return reasons(c)

    # keep_within counts back from the newest version (v8, 2024-03-04 12:00), not from now.
    assert kept("--keep-within", "2d") == {
        6: ["keep_within (2d)"],
        7: ["keep_within (2d)"],
        8: ["latest", "keep_within (2d)"],
    }
    assert kept("--keep-monthly", "2") == {
        3: ["keep_monthly (2024-02)"],  # v3, 2024-02-26, is the newest of February
        8: ["latest", "keep_monthly (2024-03)"],
    }
    assert kept("--keep", "2", "--keep-yearly", "5") == {
        7: ["keep_versions"],
        8: ["latest", "keep_versions", "keep_yearly (2024)"],
    }

    done = file_vault.json("forget", "code", "--keep-daily", "3", "--keep-weekly", "2")
    assert done["collections"][0]["forgotten"] == [1, 2, 3, 4, 7]
    assert [v["version"] for v in file_vault.versions("code")] == [5, 6, 8]
    assert file_vault.store_keys("forgotten/") == [f"forgotten/code/{n}.json" for n in (1, 2, 3, 4, 7)]


def test_config_rules_apply_after_each_snapshot(file_vault: VaultEnv) -> None:
    src = file_vault.add_collection("code", tier="warm")
    file_vault.extra_config = "keep_daily = 2\n"  # appended to [collections.code]
    file_vault.write_config()
    file_vault.run("init")
    listed: list[list[int]] = []
    for when in (
        "2024-05-01T08:00:00Z",
        "2024-05-01T20:00:00Z",
        "2024-05-02T08:00:00Z",
        "2024-05-03T08:00:00Z",
    ):
        snapshot_at(file_vault, when, src)
        listed.append([v["version"] for v in file_vault.versions("code")])
    # v2 replaces v1 as the newest of May 1st; v4 pushes May 1st out of the last two days.
    assert listed == [[1], [2], [2, 3], [3, 4]]
    assert sorted(file_vault.store_keys("forgotten/")) == ["forgotten/code/1.json", "forgotten/code/2.json"]
    # forget without options applies the config; options replace the config's rules as a whole.
    [again] = file_vault.json("forget")["collections"]
    assert again["policy"] == {"keep_daily": 2} and again["forgotten"] == []
    [weekly] = file_vault.json("forget", "--keep-weekly", "1", "--dry-run")["collections"]
    assert weekly["kept"] == [4] and weekly["forgotten"] == [3]  # 2024-05-02 and -03: both W18


def test_a_pinned_cold_version_is_kept_by_any_rules(file_vault: VaultEnv) -> None:
    src = file_vault.add_collection("photos")  # cold
    file_vault.run("init")
    write(src / "a.jpg", b"the good copy")
    snapshot_at(file_vault, "2024-06-01T10:00:00Z", src)
    write(src / "a.jpg", b"rotten")
    snapshot_at(file_vault, "2024-06-02T10:00:00Z", src, expect=3)  # v1 is pinned
    snapshot_at(file_vault, "2024-06-03T10:00:00Z", src)
    snapshot_at(file_vault, "2024-06-03T11:00:00Z", src)
    [plan] = file_vault.json("forget", "photos", "--keep-daily", "1", "--dry-run")["collections"]
    assert plan["kept"] == [1, 4] and plan["forgotten"] == [2, 3]
    # Without v2 and v3, v1 is compared with v4 (the next listed version): still pinned.
    assert reasons(plan) == {1: ["pinned (files changed in v4)"], 4: ["latest", "keep_daily (2024-06-03)"]}
    assert [p["version"] for p in plan["pinned"]] == [1]
    text = file_vault.run("forget", "photos", "--keep-daily", "1").stdout
    assert "v1 pinned: holds 1 file replaced in v4" in text and "vaultfs accept photos@v4" in text
    assert [v["version"] for v in file_vault.versions("photos")] == [1, 4]


@pytest.mark.parametrize(
    ("line", "needles"),
    [
        ('keep_within = "7x"', ("[collections.c].keep_within = '7x'", '"7d"')),
        ('keep_within = "6m"', ("[collections.c].keep_within = '6m'", "hours, days or weeks")),
        ("keep_within = 7", ("[collections.c].keep_within = 7", "a duration")),
        ('keep_within = "0d"', ("[collections.c].keep_within = '0d'", "longer than 0")),
        ("keep_daily = 0", ("[collections.c].keep_daily = 0", "at least 1")),
        ('keep_weekly = "two"', ("[collections.c].keep_weekly = 'two'", "expected an integer")),
        ("keep_monthly = -1", ("[collections.c].keep_monthly = -1", "at least 1")),
        ("keep_yearly = true", ("[collections.c].keep_yearly = True", "expected an integer")),
        ("keep_hourly = 5", ("unknown key [collections.c].keep_hourly",)),
    ],
)
def test_bad_keep_rules_in_the_config(file_vault: VaultEnv, line: str, needles: tuple[str, ...]) -> None:
    file_vault.add_collection("c")
    file_vault.extra_config = line + "\n"
    file_vault.write_config()
    one_line_error(file_vault.run("forget", "--dry-run", expect=None), str(file_vault.config_path), *needles)


def test_bad_keep_rules_on_the_command_line(file_vault: VaultEnv) -> None:
    file_vault.add_collection("c")
    one_line_error(file_vault.run("forget", "c", "--keep-within", "6m", expect=None), "--keep-within = '6m'")
    one_line_error(file_vault.run("forget", "c", "--keep-daily", "0", expect=None), "--keep-daily = 0")
    one_line_error(file_vault.run("forget", "c", "--keep", "0", expect=None), "--keep = 0", "at least 1")
    one_line_error(file_vault.run("forget", "c", expect=None), "has no keep rules", "--keep-daily")
    hook = file_vault.env(VAULTFS_TESTPOINTS="snapshot-clock=2024-06-01 10:00")
    one_line_error(file_vault.run("snapshot", expect=None, env=hook), "snapshot-clock=YYYY-MM-DDTHH:MM:SSZ")


# ---- the rules' arithmetic, in-process ------------------------------------------------------


def at(*times: str) -> list[VersionInfo]:
    """Versions 1, 2, ... created at the given UTC times."""
    return [
        VersionInfo("c", n, int(datetime.fromisoformat(t).timestamp()) * 10**9, TreeId(bytes(32)), ())
        for n, t in enumerate(times, 1)
    ]


NOW = 1_900_000_000 * 10**9  # 2030


def rules(policy: KeepPolicy, versions: list[VersionInfo], now: int = NOW) -> dict[int, list[str]]:
    return {n: [str(r) for r in rs] for n, rs in kept_by_rules(policy, versions, now).items()}


def test_iso_weeks_cross_the_new_year() -> None:
    # 2024-12-30 (Monday) is in ISO week 2025-W01; 2024-12-29 (Sunday) in 2024-W52.
    versions = at(
        "2024-12-28T12:00:00Z", "2024-12-29T12:00:00Z", "2024-12-30T12:00:00Z", "2025-01-02T12:00:00Z"
    )
    assert rules(KeepPolicy(keep_weekly=2), versions) == {
        2: ["keep_weekly (2024-W52)"],
        4: ["latest", "keep_weekly (2025-W01)"],
    }
    assert rules(KeepPolicy(keep_yearly=3), versions) == {
        3: ["keep_yearly (2024)"],
        4: ["latest", "keep_yearly (2025)"],
    }


def test_keep_within_ignores_a_version_dated_in_the_future() -> None:
    # v3 was made while the clock said 2035: "the newest" is v2's time, not 2035's; v3 is
    # kept as the latest, and everything after v2 minus a day (v2 itself and v3).
    versions = at("2024-01-01T00:00Z", "2024-01-05T00:00Z", "2035-01-01T00:00Z")
    assert rules(KeepPolicy(keep_within=86400), versions) == {
        2: ["keep_within (1d)"],
        3: ["latest", "keep_within (1d)"],
    }
    # Every version in the future: now is the reference, so all of them are within.
    assert rules(KeepPolicy(keep_within=3600), versions, now=versions[0].created_ns - 1) == {
        1: ["keep_within (1h)"],
        2: ["keep_within (1h)"],
        3: ["latest", "keep_within (1h)"],
    }
