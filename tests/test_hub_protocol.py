"""The hub's vault side at the protocol level, without SSH: `vaultfs.hub.server.serve` fed
byte streams — a valid snapshot session, the same session damaged anywhere, and frames
made up by hypothesis. Whatever it is fed, the hub never crashes (every failure is one
line to the client and the log) and a session that failed commits nothing: the versions
committed are exactly the snapshots the hub answered ``done``.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vaultfs.cli.backup import listing_json
from vaultfs.config import parse_config
from vaultfs.hub.protocol import MAX_PAYLOAD, Channel, encode
from vaultfs.hub.server import serve
from vaultfs.model import BlobId, Entry, RootMeta, encode_tree, tree_id
from vaultfs.vault import Vault

CONTENT = b"the content of a.txt\n"
BLOB = hashlib.sha256(CONTENT).digest()
LISTING = encode_tree([Entry(name=b"a.txt", kind="file", size=len(CONTENT), blob=BlobId(BLOB), mtime_ns=5)])
ROOT = tree_id(LISTING)
META = RootMeta(0o700, 0, 0, 7).to_json()


def session(collection: str = "home", content: bytes = CONTENT, claimed: bytes = CONTENT) -> bytes:
    """A whole snapshot session as a client sends it for one file holding `content` (the
    hub's questions are predictable: the root's listing, then the one content), whose
    listing claims it holds `claimed`."""
    blob = hashlib.sha256(claimed).digest()
    entry = Entry(name=b"a.txt", kind="file", size=len(claimed), blob=BlobId(blob), mtime_ns=5)
    listing = encode_tree([entry])
    return b"".join(
        [
            encode("hello", protocol=1),
            encode(
                "snapshot", collection=collection, tier="cold", root=tree_id(listing).hex(), root_meta=META
            ),
            encode("tree", listing),
            encode("blob", id=blob.hex()),
            encode("data", content),
            encode("blob-end", ok=True),
            encode("bye"),
        ]
    )


def new_vault(tmp: Path) -> Vault:
    config = parse_config(f'[vault]\nstore = "file://{tmp / "store"}"\nstate_dir = "{tmp / "state"}"\n')
    return Vault.create(config)[0]


@pytest.fixture(scope="module")
def vault(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Vault]:
    vault = new_vault(tmp_path_factory.mktemp("hub"))
    yield vault
    vault.close()


def run(vault: Vault, data: bytes, client: str = "fz") -> tuple[int, list[Any]]:
    """Serve one session fed `data`; its exit status and the frames the hub answered."""
    out = io.BytesIO()
    code = serve(vault, client, Channel(io.BytesIO(data), out), listing_json)
    answers = Channel(io.BytesIO(out.getvalue()), io.BytesIO())
    frames = []
    while True:
        try:
            frames.append(answers.read())
        except Exception:
            return code, frames


def versions(vault: Vault, client: str) -> int:
    return sum(len(vault.versions(c)) for c in vault.catalog.collections() if c.startswith(client + "."))


def test_a_valid_session_commits_and_a_wrong_content_does_not(vault: Vault) -> None:
    code, frames = run(vault, session(content=CONTENT.upper()), client="liar")  # same size, other bytes
    assert code == 1 and frames[-1].op == "error"
    assert "does not match its SHA-256" in frames[-1].header["message"]
    assert versions(vault, "liar") == 0
    code, frames = run(vault, session(), client="good")
    assert code == 0 and [f.op for f in frames] == ["welcome", "want-trees", "want-blobs", "done"]
    assert frames[-1].header["version"] == 1
    assert vault.read_blob(BlobId(BLOB)) == CONTENT
    # the same tree again: only the root's digest crosses, no listing is asked for
    code, frames = run(
        vault, session()[: -len(encode("bye"))].split(encode("tree", LISTING))[0], client="good"
    )
    assert code == 0 and [f.op for f in frames] == ["welcome", "done"] and frames[-1].header["unchanged"]


def test_unsafe_names_and_oversized_frames_are_refused(vault: Vault) -> None:
    for bad in (b"..", b"a/b", b"", b"x\0y"):
        listing = encode_tree([Entry(name=bad, kind="symlink", target=b"t")])
        data = encode("hello", protocol=1) + encode(
            "snapshot", collection="home", tier="cold", root=tree_id(listing).hex(), root_meta=META
        )
        code, frames = run(vault, data + encode("tree", listing), client="names")
        assert code != 0 and "refused" in frames[-1].header["message"], frames[-1]
    huge = encode("hello", protocol=1) + (16).to_bytes(4, "big") + (MAX_PAYLOAD + 1).to_bytes(4, "big")
    code, frames = run(vault, huge + b"{}" * 8, client="names")
    assert code == 1 and "over the bound" in frames[-1].header["message"]
    assert versions(vault, "names") == 0


json_values = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.text(max_size=12)
    | st.just(ROOT.hex())
    | st.just(BLOB.hex())
    | st.just("home")
    | st.just(META)
    | st.just([1, "x"])
)
OPS = [
    "hello",
    "snapshot",
    "tree",
    "blob",
    "data",
    "blob-end",
    "versions",
    "open-version",
    "get-tree",
    "get-blob",
    "bye",
]
KEYS = ["collection", "tier", "root", "root_meta", "id", "ok", "version", "protocol"]
frames = st.lists(
    st.builds(
        lambda op, header, payload: encode(op, payload, **header),
        st.sampled_from(OPS),
        st.dictionaries(st.sampled_from(KEYS), json_values, max_size=4),
        st.sampled_from([b"", LISTING, CONTENT, b"\xff" * 40]),
    ),
    max_size=6,
)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    content=st.binary(min_size=1, max_size=64),  # a new tree and content each time: the hub asks for both
    damage=st.lists(st.tuples(st.integers(min_value=0), st.integers(min_value=0, max_value=255)), max_size=3),
    cut=st.none() | st.integers(min_value=0),
    made_up=frames,
)
def test_damaged_or_made_up_sessions_never_crash_the_hub_nor_commit(
    vault: Vault, content: bytes, damage: list[tuple[int, int]], cut: int | None, made_up: list[bytes]
) -> None:
    data = bytearray(session(collection="fuzzed", content=content, claimed=content))
    for where, value in damage:
        data[where % len(data)] ^= value or 1
    if cut is not None:
        del data[cut % len(data) :]
    for data_fed in (bytes(data), encode("hello", protocol=1) + b"".join(made_up)):
        before = versions(vault, "fz")
        code, answers = run(vault, data_fed)  # returns: no exception escapes the hub
        # a version is committed only by a snapshot the hub answered `done`; a failed one
        # (and the session's end) commits nothing
        done = [a for a in answers if a.op == "done" and a.header.get("version")]
        assert versions(vault, "fz") - before == len(done)
        if code != 0:
            assert answers[-1].op == "error"
    assert not any(Path(vault.spool_dir).iterdir())  # no half-written band left behind


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ('[hub]\nurl = "nas"\n', "[hub].url = 'nas': expected \"ssh://[user@]host[:port]\""),
        ('[hub]\nurl = "ssh://nas"\n[vault]\nstore = "file:///s"\n', "[vault].store and [hub] are both set"),
        ('[hub]\nurl = "ssh://nas"\nssh_command = "ssh \'-i"\n', "[hub].ssh_command"),
        ('[vault]\nstore = "file:///s"\n[clients."a.b"]\nkeep_daily = 7\n', "[clients.a.b]: client name"),
        (
            '[vault]\nstore = "file:///s"\n[clients.laptop]\nkeep_dayly = 7\n',
            "unknown key [clients.laptop].keep_dayly",
        ),
    ],
)
def test_hub_and_client_config_keys_are_checked(text: str, error: str) -> None:
    from vaultfs.errors import ConfigError

    with pytest.raises(ConfigError) as e:
        parse_config(text)
    assert error in e.value.message


def test_a_client_config_needs_no_store() -> None:
    config = parse_config('[hub]\nurl = "ssh://vault@nas:2222"\nssh_command = "ssh -i k"\n')
    assert config.hub is not None and config.store == ""
    assert config.hub.ssh_argv() == ["ssh", "-i", "k", "-p", "2222", "vault@nas", "vaultfs serve --stdio"]
    hub = parse_config('[vault]\nstore = "file:///s"\n[clients.laptop]\nkeep_daily = 7\n')
    assert hub.client_keep("laptop.home").keep_daily == 7 and hub.client_keep("desk.home").empty


def test_a_client_reads_back_only_its_own_versions(tmp_path: Path) -> None:
    """`mine` committed the tree; `other` knows its ids but can open no version of it, and
    asking for the listing or the content by id is refused."""
    vault = new_vault(tmp_path)
    assert run(vault, session(), client="mine")[0] == 0
    hello = encode("hello", protocol=1)
    for request in (
        encode("get-tree", id=ROOT.hex()),
        encode("get-blob", id=BLOB.hex()),
        encode("open-version", collection="mine.home"),
    ):
        code, frames = run(vault, hello + request, client="other")
        assert code == 2 and "refused" in frames[-1].header["message"], frames[-1]
    code, frames = run(vault, hello + encode("open-version", collection="home"), client="other")
    assert code == 2 and "has no versions yet" in frames[-1].header["message"]
    # its owner gets both, after opening the version
    code, frames = run(
        vault,
        hello
        + encode("open-version", collection="home")
        + encode("get-tree", id=ROOT.hex())
        + encode("get-blob", id=BLOB.hex()),
        client="mine",
    )
    assert code == 0 and [f.op for f in frames] == ["welcome", "version", "tree", "data", "blob-end"]
    assert frames[2].payload == LISTING and frames[3].payload == CONTENT and frames[4].header["ok"]


def test_a_restore_gives_owners_by_name_when_recorded_and_known() -> None:
    """A hub client's entries carry the owners' names (its files may come back on another
    machine): a known name wins over the number, an unknown one leaves the number."""
    from vaultfs.extract import owner_ids

    named = Entry(name=b"f", kind="file", uid=4242, gid=4243, uname="root", gname="root")
    assert owner_ids(named) == (0, 0)
    unknown = Entry(name=b"f", kind="file", uid=4242, gid=4243, uname="nobody-here-x", gname="none-x")
    assert owner_ids(unknown) == (4242, 4243)
    assert owner_ids(Entry(name=b"f", kind="file", uid=7, gid=8)) == (7, 8)
