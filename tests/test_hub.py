"""The NAS as a hub (issue 14): clients back up to it over SSH's stdin/stdout.

Each client is a real ``vaultfs`` with a ``[hub]`` config naming a real OpenSSH sshd on
127.0.0.1 (`tests.sshd`), whose authorized_keys holds the line ``vaultfs clients add``
printed for the client's own key: sshd forces ``vaultfs serve --stdio --client NAME``.
The protocol, the client, ssh and the vault side are all the real thing. Results are checked with ``diff -r``,
``getfattr``, ``getfacl``, stat and the hub's own ``vaultfs versions``.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import stat
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

from tests.sshd import Sshd, vaultfs_command
from tests.trees import write
from tests.vaultenv import REPO, VaultEnv

OLD = 1_500_000_000 * 10**9 + 123


class Client:
    """A client machine: its source, its config (``[hub]`` naming the test's real sshd), its
    state directory, and its own SSH key, let in on the hub by the line `vaultfs clients add`
    prints (a forced ``vaultfs serve --stdio --client NAME``)."""

    def __init__(
        self, hub: VaultEnv, sshd: Sshd, name: str, collection: str = "home", tier: str = "cold"
    ) -> None:
        self.hub, self.sshd, self.name = hub, sshd, name
        self.dir = hub.tmp / f"client-{name}"
        self.src = self.dir / collection
        self.src.mkdir(parents=True, exist_ok=True)
        self.key = self.dir / "id_ed25519"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.key)], check=True)
        self.pidfile = self.dir / "serve.pid"
        self.set_hub_env("")
        self.config = self.dir / "vault.toml"
        self.tier = tier
        self.write_config(collection)

    def set_hub_env(self, testpoints: str) -> None:
        """(Re)authorize this client's key; `testpoints`: the hub side's VAULTFS_TESTPOINTS (the
        client's own are not passed on: ssh passes no environment). The forced command notes
        the serve process's pid first."""
        program = f"echo $$ > {self.pidfile}; exec " + vaultfs_command(VAULTFS_TESTPOINTS=testpoints)
        line = self.hub.run("clients", "add", self.name, f"{self.key}.pub", "--program", program).stdout
        AUTHORIZED.setdefault(self.sshd.authorized_keys, {})[self.name] = line.strip()
        self.sshd.authorize("\n".join(AUTHORIZED[self.sshd.authorized_keys].values()))

    def write_config(self, *collections: str) -> None:
        args = [*self.sshd.ssh_args]
        args[args.index("-i") + 1] = str(self.key)
        text = textwrap.dedent(f"""\
            [hub]
            url = "{self.sshd.url}"
            ssh_command = "{shlex.join(args)}"
            [vault]
            state_dir = "{self.dir / "state"}"
            """)
        for c in collections:
            text += f'[collections."{c}"]\npath = "{self.dir / c}"\ntier = "{self.tier}"\n'
        self.config.write_text(text)

    def run(
        self, *args: str, expect: int | None = 0, testpoints: str = ""
    ) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ, VAULTFS_TESTPOINTS=testpoints)
        env.pop("VAULTFS_CONFIG", None)
        proc = subprocess.run(
            [sys.executable, "-m", "vaultfs.cli", "--config", str(self.config), *args],
            capture_output=True,
            text=True,
            env=env,
            cwd=REPO,
            timeout=120,
        )
        if expect is not None:
            assert proc.returncode == expect, (
                f"{args} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}\n{self.sshd.log()}"
            )
        return proc

    def snapshot(self, expect: int = 0, testpoints: str = "") -> dict[str, Any]:
        return dict(json.loads(self.run("snapshot", "--json", expect=expect, testpoints=testpoints).stdout))

    def popen(self, *args: str) -> subprocess.Popen[str]:
        env = dict(os.environ)
        env.pop("VAULTFS_CONFIG", None)
        return subprocess.Popen(
            [sys.executable, "-m", "vaultfs.cli", "--config", str(self.config), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=REPO,
        )


AUTHORIZED: dict[Path, dict[str, str]] = {}  # per sshd (its authorized_keys): each client's line


def hub_versions(hub: VaultEnv, collection: str) -> list[dict[str, Any]]:
    return list(hub.json("versions", collection)["versions"])


def sh(*cmd: str, cwd: Path | None = None) -> str:
    return subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=cwd).stdout


def make_everything(src: Path) -> None:
    """Every kind of entry and metadata a client's files carry."""
    write(src / "docs" / "a.txt", b"alpha\n")
    write(src / "docs" / "deep" / "b.bin", os.urandom(300_000))
    write(src / "big.bin", os.urandom(2_500_000))
    os.link(src / "big.bin", src / "big-link.bin")
    os.symlink("docs/a.txt", src / "link")
    os.symlink("/nowhere/at/all", src / "dangling")
    os.mkfifo(src / "fifo")
    os.mknod(src / "null", 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    with open(src / "sparse.img", "wb") as f:
        f.truncate(20 * 1024 * 1024)
        f.seek(8 * 1024 * 1024)
        f.write(b"data in the middle" * 1000)
    sh("setfattr", "-n", "user.colour", "-v", "blue", str(src / "docs" / "a.txt"))
    sh("setfacl", "-m", "u:1234:r--,g:5:rw-", str(src / "docs" / "a.txt"))
    sh("setfacl", "-d", "-m", "u:1234:rwx", str(src / "docs"))
    os.chown(src / "docs" / "deep" / "b.bin", 1234, 5678)
    os.chmod(src / "docs" / "deep", 0o750)
    os.chmod(src / "big.bin", 0o4711)
    for p in (src / "docs" / "a.txt", src / "docs" / "deep" / "b.bin", src / "docs" / "deep"):
        os.utime(p, ns=(OLD, OLD))
    os.chmod(src, 0o700)


def metadata(root: Path) -> dict[str, tuple[int, ...]]:
    """(mode, uid, gid, mtime_ns, rdev) of every entry but the root, and which share an inode."""
    out: dict[str, tuple[int, ...]] = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        mtime = 0 if stat.S_ISLNK(st.st_mode) else st.st_mtime_ns
        out[str(p.relative_to(root))] = (st.st_mode, st.st_uid, st.st_gid, mtime, st.st_rdev, st.st_nlink)
    return out


def test_a_client_snapshots_and_fetches_through_the_hub(vault_env: VaultEnv, sshd: Sshd) -> None:
    hub = vault_env
    hub.run("init")
    laptop = Client(hub, sshd, "laptop", tier="warm")  # warm: its bands stay readable on S3
    make_everything(laptop.src)

    first = laptop.snapshot()
    home = first["collections"][0]
    assert home["collection"] == "home" and home["version"] == 1
    # hashes first: four distinct contents (the hard link and the sparse file's data once)
    assert home["contents_sent"] == 4 and home["files_hashed"] == 4
    # the hub has it as laptop.home, among its own versions
    assert [v["version"] for v in hub_versions(hub, "laptop.home")] == [1]
    assert hub_versions(hub, "laptop.home")[0]["files"] == 5

    again = laptop.snapshot()
    same = again["collections"][0]
    # no change: no file read (the client's files cache), no listing, no content: the root's digest
    assert same["unchanged"] is True and same["files_hashed"] == 0 and same["contents_sent"] == 0
    assert again["bytes_sent"] < 2000
    assert len(hub_versions(hub, "laptop.home")[0]["verified"]) == 1

    write(laptop.src / "docs" / "new.txt", b"a new file\n")
    third = laptop.snapshot()["collections"][0]
    assert third["version"] == 2 and third["contents_sent"] == 1 and third["files_hashed"] == 1

    listed = json.loads(laptop.run("versions", "home", "--json").stdout)
    assert [v["version"] for v in listed["versions"]] == [1, 2]

    out = laptop.dir / "restored"
    laptop.run("restore", "fetch", "home@v2", "--to", str(out))
    diff = subprocess.run(
        ["diff", "-r", "--no-dereference", str(laptop.src), str(out)], capture_output=True, text=True
    )
    # diff names special files it cannot compare; it finds no difference in content
    assert "differ" not in diff.stdout and "Only in" not in diff.stdout, diff.stdout
    assert metadata(out) == metadata(laptop.src)
    assert stat.S_IMODE(out.stat().st_mode) == 0o700
    assert sh("getfattr", "-n", "user.colour", "--only-values", str(out / "docs" / "a.txt")) == "blue"
    assert sh("getfacl", "-n", "-p", "docs/a.txt", "docs", cwd=out) == sh(
        "getfacl", "-n", "-p", "docs/a.txt", "docs", cwd=laptop.src
    )
    assert (out / "big.bin").stat().st_ino == (out / "big-link.bin").stat().st_ino
    assert (out / "sparse.img").stat().st_blocks * 512 < 1024 * 1024  # its holes came back as holes

    # the bands are plain tar + zstd on the hub's store, with the owners' names
    members = ""
    for key in hub.store_keys("bands/"):
        if key.endswith(".tar.zst"):
            band = hub.fetch_object(key, laptop.dir / "band.tar.zst")
            members += subprocess.run(
                f"zstd -dc {band} | tar -tvf -", shell=True, capture_output=True, text=True, check=True
            ).stdout
    assert any("root/root" in m and "laptop.home/docs/a.txt" in m for m in members.splitlines()), members
    assert any("1234/5678" in m and "laptop.home/docs/deep/b.bin" in m for m in members.splitlines())

    # what only the hub may do
    for args in (("forget", "home@v1"), ("prune",), ("compact",), ("index", "rebuild")):
        refused = laptop.run(*args, expect=2)
        assert "the hub keeps this machine's history; run it on the NAS" in refused.stderr
    assert [v["version"] for v in hub_versions(hub, "laptop.home")] == [1, 2]
    # the hub's owner can: laptop.home is one of the hub's collections
    hub.run("forget", "laptop.home", "--keep", "1")
    assert [v["version"] for v in hub_versions(hub, "laptop.home")] == [2]
    hub.run("check")


def wait_until(condition: Any, what: str) -> None:
    """Poll a condition another process makes true (a process stopped at a test point)."""
    import time

    deadline = time.monotonic() + 60
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def stopped(pidfile: Path) -> bool:
    try:
        pid = int(pidfile.read_text())
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T"
    except (OSError, ValueError):
        return False


def test_two_clients_share_contents_wait_for_each_other_and_stay_apart(tmp_path: Path, sshd: Sshd) -> None:
    hub = VaultEnv(tmp_path, f"file://{tmp_path / 'store'}")
    hub.write_config()
    hub.run("init")
    shared = os.urandom(1_500_000)
    laptop, desk = Client(hub, sshd, "laptop"), Client(hub, sshd, "desk")
    local = tmp_path / "src" / "desk.photos"  # a local collection of the hub, added since, named like desk's
    local.mkdir(parents=True)
    hub.extra_config = f'[collections."desk.photos"]\npath = "{local}"\n'
    hub.write_config()
    write(laptop.src / "holiday.jpg", shared)
    write(laptop.src / "laptop-only.txt", b"laptop\n")
    write(desk.src / "copy of holiday.jpg", shared)
    write(desk.src / "desk-only.txt", b"desk\n")

    # laptop stops at its commit, holding the vault lock; desk waits for it and says so
    laptop.set_hub_env("before-commit=stop")
    first = laptop.popen("snapshot", "--json")
    wait_until(lambda: stopped(laptop.pidfile), "laptop's serve to stop at before-commit")
    second = desk.popen("snapshot", "--json")
    assert second.stderr is not None
    assert "waiting for its commit" in second.stderr.readline()
    os.kill(int(laptop.pidfile.read_text()), signal.SIGCONT)
    out1, err1 = first.communicate(timeout=120)
    out2, err2 = second.communicate(timeout=120)
    assert first.returncode == 0 and second.returncode == 0, err1 + err2
    # the same photo on two machines is sent and stored once
    assert json.loads(out1)["collections"][0]["contents_sent"] == 2
    assert json.loads(out2)["collections"][0]["contents_sent"] == 1
    assert hub_versions(hub, "laptop.home")[0]["files"] == 2
    assert hub_versions(hub, "desk.home")[0]["files"] == 2

    # a client names only its own collections: not another client's, not a local one
    for name in ("laptop.home", "photos"):
        (desk.dir / name).mkdir(exist_ok=True)
        write(desk.dir / name / "x.txt", b"x\n")
        desk.write_config(name)
        refused = desk.run("snapshot", expect=2)
        assert "refused" in refused.stderr
    log = (hub.state_dir / "hub.log").read_text()
    assert "client desk: refused: collection 'laptop.home' refused" in log
    assert "desk.photos is a local collection of the hub" in log
    desk.tier = "warm"  # a cold collection cannot be made warm by its client (pins would lift)
    desk.write_config("home")
    assert "home' is cold on the hub: a client cannot make it warm" in desk.run("snapshot", expect=2).stderr
    fetched = json.loads(desk.run("versions", "--json").stdout)["collections"]
    assert [d["collection"] for d in fetched] == ["home"]  # laptop's are not listed to desk
    assert len(hub_versions(hub, "laptop.home")) == 1
    hub.run("check")


def test_nothing_is_committed_from_a_lying_or_vanished_client_and_resume_resends_only_what_is_missing(
    tmp_path: Path, sshd: Sshd
) -> None:
    hub = VaultEnv(tmp_path, f"file://{tmp_path / 'store'}", band_size="64KiB")
    hub.extra_config = "[clients.laptop]\nkeep_versions = 1\n"  # the hub's keep rules for laptop.*
    hub.write_config()
    hub.run("init")
    laptop = Client(hub, sshd, "laptop")
    for i in range(5):  # each content fills a band of its own: resume is at band granularity
        write(laptop.src / f"f{i}.bin", os.urandom(100_000))

    def committed() -> list[str]:
        return [c["collection"] for c in hub.json("versions")["collections"] if c["versions"]]

    lied = laptop.run("snapshot", expect=1, testpoints="hub-lie-content=fail")
    assert "does not match its SHA-256: nothing was committed" in lied.stderr
    assert committed() == []

    laptop.set_hub_env("band-uploaded#2=kill")  # the hub dies after two bands are stored
    gone = laptop.run("snapshot", expect=1)
    assert "closed the connection" in gone.stderr
    assert committed() == []
    laptop.set_hub_env("")
    resumed = laptop.snapshot()
    assert resumed["collections"][0]["contents_sent"] == 3  # the two stored are not sent again
    assert resumed["bytes_sent"] < 3 * 100_000 + 10_000
    assert committed() == ["laptop.home"]

    for i in range(5, 8):
        write(laptop.src / f"f{i}.bin", os.urandom(100_000))
    killed = laptop.run("snapshot", expect=None, testpoints="hub-content-sent#2=kill")
    assert killed.returncode == -9
    assert len(hub_versions(hub, "laptop.home")) == 1  # the client's death committed nothing
    again = laptop.snapshot()["collections"][0]
    assert again["version"] == 2 and 1 <= again["contents_sent"] <= 2  # at least one band was kept
    # the hub applies its own keep rules for the client after the snapshot
    assert again["forgotten"] == [1] and [v["version"] for v in hub_versions(hub, "laptop.home")] == [2]

    out = laptop.dir / "restored"
    laptop.run("restore", "fetch", "home", "--to", str(out))
    sh("diff", "-r", str(laptop.src), str(out))
    hub.run("check")

    # the hub killed at its commit: before the version record, then right after it
    write(laptop.src / "f8.bin", os.urandom(100_000))
    laptop.set_hub_env("before-commit=kill")
    laptop.run("snapshot", expect=1)
    laptop.set_hub_env("version-record-written=kill")
    committed_unseen = laptop.run("snapshot", expect=1)  # the record is on the store, not yet known
    assert "closed the connection" in committed_unseen.stderr
    laptop.set_hub_env("")
    adopted = laptop.snapshot()["collections"][0]  # the record on the store is adopted
    assert adopted["unchanged"] and adopted["latest"]["number"] == 3 and adopted["contents_sent"] == 0
    assert [v["version"] for v in hub_versions(hub, "laptop.home")] == [3]

    # a cold collection's deleted file: the client warns (exit 3); the hub pins the version
    # holding it, which its keep rule then keeps
    (laptop.src / "f0.bin").unlink()
    warned = laptop.run("snapshot", expect=3)
    assert "cold collection home: 1 file(s) deleted since the previous version" in warned.stderr
    assert "f0.bin" in warned.stderr and "v3 keeps the old content and is pinned on the hub" in warned.stderr
    assert [v["version"] for v in hub_versions(hub, "laptop.home")] == [3, 4]
