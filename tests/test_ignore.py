"""What a collection leaves out, end to end through the real command (issue 13, points 1–4):
git's ignore rules on a warm collection with tracked files kept, the Cache Directory
Tagging signature, ``exclude`` on a cold collection, a change of rules between versions,
and ``vaultfs explain`` for each kind of rule. Results are checked on the restored files
with ``find``. (The rules themselves against git: tests/test_ignore_git.py.)
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path

from tests.trees import write
from tests.vaultenv import VaultEnv

GIT_ENV = {"GIT_CONFIG_GLOBAL": "/dev/null", "GIT_CONFIG_NOSYSTEM": "1"}
SIGNATURE = b"Signature: 8a477f597d28d172789f06886806bc55\n# made by a test\n"


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, env=GIT_ENV)


def make_repo(src: Path) -> None:
    """A work tree: build output, a tracked object file, nested rules, cache directories."""
    write(src / "app/.gitignore", b"# build output\n*.o\nbuild/\n!keep.o\n/local.txt\n")
    write(src / "app/main.c", b"int main(void) { return 0; }\n")
    write(src / "app/main.o", b"\x7fELF object")
    write(src / "app/keep.o", b"re-included")
    write(src / "app/build/out.bin", b"x" * 5000)
    write(src / "app/build/deep/more.bin", b"y" * 5000)
    write(src / "app/vendor/lib.o", b"tracked although ignored")
    write(src / "app/local.txt", b"anchored: only app/local.txt")
    write(src / "app/sub/local.txt", b"not matched by /local.txt")
    write(src / "app/sub/.gitignore", b"!*.o\n")  # a deeper file overrides: sub's .o files stay
    write(src / "app/sub/part.o", b"kept by app/sub/.gitignore")
    write(src / "cache/CACHEDIR.TAG", SIGNATURE)
    write(src / "cache/blob", b"cached")
    write(src / "fake/CACHEDIR.TAG", b"no signature here\n")
    write(src / "fake/data", b"kept: the tag is not a real one")
    git(src, "init", "-q")
    git(src, "add", "-f", "app/vendor/lib.o", "app/main.c")
    write(src / ".git/info/exclude", b"*.swp\n")
    write(src / "notes.swp", b"editor swap")


def restored_files(env: VaultEnv, collection: str) -> set[str]:
    to = Path(tempfile.mkdtemp(prefix=f"restored-{collection}-", dir=env.tmp))
    env.run("restore", "fetch", collection, "--to", str(to), env=env.env(**GIT_ENV))
    out = subprocess.run(["find", str(to), "-type", "f", "-printf", "%P\\n"], check=True, capture_output=True)
    return {p for p in out.stdout.decode().splitlines() if not p.startswith(".git/")}


def test_a_warm_collection_keeps_what_git_keeps_and_every_tracked_file(vault_env: VaultEnv) -> None:
    src = vault_env.add_collection("code", tier="warm")
    make_repo(src)
    vault_env.run("init")
    out = vault_env.json("snapshot", "code")  # exit 0: leaving out is not skipping
    assert out["collections"][0]["excluded"] == 5  # main.o, build/, local.txt, cache/, notes.swp
    files = restored_files(vault_env, "code")
    assert files == {
        "app/.gitignore",
        "app/main.c",
        "app/keep.o",
        "app/vendor/lib.o",
        "app/sub/.gitignore",
        "app/sub/local.txt",
        "app/sub/part.o",
        "fake/CACHEDIR.TAG",
        "fake/data",
    }
    assert any(vault_env.tmp.glob("restored-code-*/.git/HEAD"))  # the history is kept


def test_explain_names_the_rule_file_and_line(file_vault: VaultEnv) -> None:
    src = file_vault.add_collection("code", tier="warm")
    make_repo(src)
    write(src / "big.iso", b"z" * 3000)
    file_vault.extra_config = 'exclude = ["*.iso"]\n'  # appended to [collections.code]
    file_vault.write_config()
    paths = [
        "app/build",
        "app/build/deep/more.bin",
        "app/vendor/lib.o",
        "app/keep.o",
        "app/main.c",
        "cache",
        "fake",
        "notes.swp",
        "big.iso",
        str(src / ".git/HEAD"),
    ]
    out = file_vault.run("explain", "code", *paths, env=file_vault.env(**GIT_ENV)).stdout.splitlines()
    assert out == [
        'app/build/ — excluded by app/.gitignore:3 "build/"',
        'app/build/deep/more.bin — excluded: inside app/build/ (excluded by app/.gitignore:3 "build/")',
        'app/vendor/lib.o — kept: tracked by git although app/.gitignore:2 "*.o" matches',
        'app/keep.o — kept: re-included by app/.gitignore:4 "!keep.o"',
        "app/main.c — kept (no rule matches)",
        "cache/ — excluded: the directory holds CACHEDIR.TAG with the Cache Directory Tagging "
        "signature (exclude_if_present)",
        "fake/ — kept (no rule matches)",
        'notes.swp — excluded by .git/info/exclude:1 "*.swp"',
        'big.iso — excluded by [collections.code].exclude:1 "*.iso"',
        ".git/HEAD — kept: git's own directory (the history)",
    ]
    doc = file_vault.json("explain", "code", "app/main.o", "missing", expect=2)
    assert doc["paths"] == [
        {
            "path": "app/main.o",
            "kept": False,
            "reason": "gitignore",
            "rule": {"file": "app/.gitignore", "line": 2, "pattern": "*.o", "negated": False},
            "inside": None,
            "detail": "",
            "text": 'app/main.o — excluded by app/.gitignore:2 "*.o"',
        }
    ]
    assert doc["errors"] == ["missing: No such file or directory"]


def test_a_change_of_rules_changes_the_next_version_and_says_so(file_vault: VaultEnv) -> None:
    src = file_vault.add_collection("code", tier="warm")
    make_repo(src)
    for i in range(12):
        write(src / f"app/logs/run{i}.log", b"log %d" % i)
    file_vault.run("init")
    file_vault.run("snapshot")
    assert "app/logs/run3.log" in restored_files(file_vault, "code")
    with open(src / "app/.gitignore", "ab") as f:
        f.write(b"logs/\n")
    proc = file_vault.run("snapshot", env=file_vault.env(**GIT_ENV))  # exit 0: no mass removal warning
    assert "code: rules changed: 12 paths now excluded (v1 still holds them" in proc.stdout
    assert not any(p.startswith("app/logs/") for p in restored_files(file_vault, "code"))
    assert "rules changed" not in file_vault.run("snapshot", env=file_vault.env(**GIT_ENV)).stdout
    # Undoing the rule brings them back (the unchanged directory's memo is not reused), and
    # the snapshot tells them from new files: another rule now leaves sub/ out.
    ignore = src / "app/.gitignore"
    ignore.write_bytes(ignore.read_bytes().replace(b"logs/\n", b"sub/\n"))
    write(src / "app/new.txt", b"a new file, not one a rule used to leave out")
    proc = file_vault.run("snapshot", env=file_vault.env(**GIT_ENV))
    assert (
        "code: rules changed: 3 paths now excluded (v2 still holds them; `vaultfs explain` says "
        "which rule), 12 paths now included (v2 left them out)\n"
    ) in proc.stdout
    assert "app/logs/run3.log" in restored_files(file_vault, "code")
    ignore.write_bytes(ignore.read_bytes().replace(b"sub/\n", b""))
    doc = file_vault.json("snapshot")["collections"][0]
    assert (doc["now_excluded"], doc["now_included"], doc["stats"]["added"]) == (0, 3, 3)


def test_git_global_excludes_is_the_file_git_itself_reads(file_vault: VaultEnv) -> None:
    """git finds core.excludesFile in its global config (GIT_CONFIG_GLOBAL, ``~`` expanded
    with HOME), else at $XDG_CONFIG_HOME/git/ignore, else at $HOME/.config/git/ignore: each
    place holds another pattern, and vaultfs must apply the one git applies."""
    tmp = file_vault.tmp
    home, xdg, config = tmp / "home", tmp / "xdg", tmp / "gitconfig"
    write(xdg / "git/ignore", b"*.bak\n")
    write(home / ".config/git/ignore", b"*.orig\n")
    write(home / "my-ignores", b"*.rej\n")
    config.write_text("[core]\n\texcludesFile = ~/my-ignores\n")
    cases = {  # the environment → the file git reads, and the name it leaves out
        "xdg": ({"XDG_CONFIG_HOME": str(xdg)}, xdg / "git/ignore", "main.c.bak"),
        "home": ({}, home / ".config/git/ignore", "notes.orig"),
        "configured": (
            {"XDG_CONFIG_HOME": str(xdg), "GIT_CONFIG_GLOBAL": str(config)},
            home / "my-ignores",
            "x.rej",
        ),
    }
    src = file_vault.add_collection("code", tier="warm")
    names = {"main.c.bak", "notes.orig", "x.rej"}
    for name in names:
        write(src / name, b"content")
    git(src, "init", "-q")
    file_vault.run("init")
    for extra, path, left_out in cases.values():
        env = {**file_vault.env(**GIT_ENV, HOME=str(home)), **extra}
        if "XDG_CONFIG_HOME" not in extra:
            env.pop("XDG_CONFIG_HOME", None)
        listed = subprocess.run(
            ["git", "-C", str(src), "ls-files", "--others", "--exclude-standard"],
            check=True,
            capture_output=True,
            text=True,
            env=env,
        ).stdout.split()
        assert set(listed) == names - {left_out}  # git's own verdict
        for applied in (True, False):
            file_vault.extra_config = f"git_global_excludes = {'true' if applied else 'false'}\n"
            file_vault.write_config()
            out = file_vault.run("explain", "code", *sorted(names), env=env).stdout
            kept = {line.split(" — ")[0] for line in out.splitlines() if " — kept" in line}
            assert kept == (set(listed) if applied else names)
            assert (f'{left_out} — excluded by {path}:1 "' in out) == applied
    # A snapshot finds the file as explain does.
    file_vault.extra_config = "git_global_excludes = true\n"
    file_vault.write_config()
    env = {**file_vault.env(**GIT_ENV, HOME=str(home)), **cases["xdg"][0]}
    doc = json.loads(file_vault.run("snapshot", "--json", env=env).stdout)["collections"][0]
    assert doc["excluded"] == 1
    assert restored_files(file_vault, "code") == names - {"main.c.bak"}


def test_exclude_larger_than_leaves_out_regular_files_above_the_size(file_vault: VaultEnv) -> None:
    src = file_vault.add_collection("code", tier="warm")
    write(src / "at-limit.bin", b"a" * 1024)  # not larger: kept
    write(src / "above.bin", b"b" * 1025)
    write(src / "tracked.iso", b"c" * 5000)  # the owner's own rule: tracked or not
    write(src / "dir/big/inside.bin", b"d" * 2000)  # the directory stays; the file goes
    (src / "link").symlink_to("above.bin")  # a symbolic link is no regular file: kept
    git(src, "init", "-q")
    git(src, "add", "tracked.iso")
    file_vault.extra_config = 'exclude_larger_than = "1KiB"\n'
    file_vault.write_config()
    file_vault.run("init")
    doc = file_vault.json("snapshot")["collections"][0]
    in_git = [p for p in (src / ".git").rglob("*") if p.is_file() and p.stat().st_size > 1024]
    assert in_git  # hook samples, the index: larger than the limit, and kept (the history)
    assert doc["excluded"] == 3
    files = restored_files(file_vault, "code")
    assert files == {"at-limit.bin"}
    [restored] = file_vault.tmp.glob("restored-code-*")
    for p in in_git:  # .git is whole: a repository git can still read
        assert (restored / p.relative_to(src)).read_bytes() == p.read_bytes()
    assert os.readlink(restored / "link") == "above.bin"
    assert (restored / "dir/big").is_dir()
    out = file_vault.run("explain", "code", "above.bin", "tracked.iso", "at-limit.bin", "dir/big").stdout
    assert out.splitlines() == [
        "above.bin — excluded: 1,025 bytes, larger than 1,024 bytes (exclude_larger_than)",
        "tracked.iso — excluded: 4.9 KiB, larger than 1.0 KiB (exclude_larger_than)",
        "at-limit.bin — kept (no rule matches)",
        "dir/big/ — kept (no rule matches)",
    ]


def test_exclude_applies_to_a_cold_collection(file_vault: VaultEnv) -> None:
    src = file_vault.add_collection("photos")  # cold: no .gitignore applies
    write(src / "2024/a.jpg", b"jpeg")
    write(src / "2024/a.jpg.tmp", b"partial download")
    write(src / "thumbs/t.jpg", b"thumbnail")
    write(src / ".gitignore", b"*.jpg\n")
    file_vault.extra_config = 'exclude = ["*.tmp", "/thumbs/"]\n'
    file_vault.write_config()
    file_vault.run("init")
    file_vault.run("snapshot")
    assert restored_files(file_vault, "photos") == {"2024/a.jpg", ".gitignore"}
    file_vault.extra_config = 'exclude_larger_than = "1GiB"\n'
    file_vault.write_config()
    proc = file_vault.run("snapshot", expect=2)
    assert proc.stderr.strip().endswith(
        "[collections.photos].exclude_larger_than: only for warm collections (a cold collection "
        'keeps every file); remove it or set tier = "warm"'
    )


def test_without_git_tracked_protection_is_off_and_said_once(file_vault: VaultEnv) -> None:
    src = file_vault.add_collection("code", tier="warm")
    make_repo(src)
    file_vault.run("init")
    no_git = file_vault.tmp / "empty-bin"
    no_git.mkdir()
    proc = file_vault.run("snapshot", env=file_vault.env(PATH=str(no_git), **GIT_ENV))
    notes = [line for line in proc.stderr.splitlines() if "tracked-file protection is off" in line]
    assert notes == [
        "note: code: tracked-file protection is off for . (git is not installed): files git "
        "tracks are left out when an ignore rule matches them"
    ]
    assert "app/vendor/lib.o" not in restored_files(file_vault, "code")


def test_files_a_new_rule_leaves_out_of_a_cold_collection_pin_the_version_before(
    file_vault: VaultEnv,
) -> None:
    """The new version lacks them, so the one before holds their last copy: the snapshot
    says it is pinned and which `accept` releases it (only those files), and keep_versions
    keeps it (so "still holds them" stays true)."""
    src = file_vault.add_collection("photos")  # cold
    write(src / "2024/a.jpg", b"jpeg")
    write(src / "2024/a.tmp", b"partial download")
    write(src / "thumbs/t1.jpg", b"thumbnail 1")
    write(src / "thumbs/t2.jpg", b"thumbnail 2")
    file_vault.extra_config = "keep_versions = 1\n"
    file_vault.write_config()
    file_vault.run("init")
    file_vault.run("snapshot")
    file_vault.extra_config = 'keep_versions = 1\nexclude = ["/thumbs/"]\n'
    file_vault.write_config()
    doc = file_vault.json("snapshot")["collections"][0]  # exit 0: leaving out is not a warning
    assert (doc["modified"], doc["deleted"], doc["now_excluded"]) == ([], [], 2)
    assert doc["pinned"] == 1 and doc["now_excluded_under"] == ["thumbs"]
    assert doc["release"] == "vaultfs accept photos@v2 thumbs" and doc["forgotten"] == []
    rows = file_vault.versions("photos")
    assert [r["version"] for r in rows] == [1, 2]
    assert rows[0]["pinned"]["deleted"] == ["thumbs/t1.jpg", "thumbs/t2.jpg"]
    # In words: a second rule, and the text output.
    file_vault.extra_config = 'keep_versions = 1\nexclude = ["/thumbs/", "*.tmp"]\n'
    file_vault.write_config()
    proc = file_vault.run("snapshot")
    assert "photos: rules changed: 1 paths now excluded (v2 still holds them;" in proc.stdout
    assert (
        "photos: v2 holds 1 file(s) that the rules now leave out and is pinned: forget and prune "
        "keep it until `vaultfs accept photos@v3 2024/a.tmp` says leaving them out was intended"
    ) in proc.stderr
    assert [r["version"] for r in file_vault.versions("photos")] == [1, 2, 3]
    # The commands given release exactly those versions.
    assert file_vault.json("accept", "photos@v2", "thumbs")["released"] == [1]
    assert file_vault.json("accept", "photos@v3", "2024/a.tmp")["released"] == [2]
    assert file_vault.json("forget")["collections"][0]["forgotten"] == [1, 2]


def test_rules_changed_does_not_claim_a_version_keep_versions_forgot(file_vault: VaultEnv) -> None:
    src = file_vault.add_collection("code", tier="warm")  # warm: nothing is pinned
    write(src / "main.c", b"int main;\n")
    for i in range(3):
        write(src / f"logs/run{i}.log", b"log %d" % i)
    file_vault.extra_config = "keep_versions = 1\n"
    file_vault.write_config()
    file_vault.run("init")
    file_vault.run("snapshot")
    file_vault.extra_config = 'keep_versions = 1\nexclude = ["/logs/"]\n'
    file_vault.write_config()
    proc = file_vault.run("snapshot")
    assert "code: forgot 1 version(s) v1; keeping 1 (v2) by keep_versions 1" in proc.stdout
    said = "code: rules changed: 3 paths now excluded (the keep rules forgot v1, which held them;"
    assert said in proc.stdout
    assert "still holds them" not in proc.stdout
    assert [r["version"] for r in file_vault.versions("code")] == [2]
