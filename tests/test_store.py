"""One conformance suite over every store, plus what only S3 or the wrappers do.

Variants of the suite (``backend`` fixture):
  local        LocalStore in a temporary directory
  s3           S3Store on moto's HTTP server, under a key prefix
  faulty-local RetryingStore(FaultyStore(LocalStore)) failing ~40% of calls
  faulty-s3    RetryingStore(FaultyStore(S3Store)) failing ~40% of calls
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.moto_server import AuthServer, S3Bucket, free_port
from vaultfs.config import S3Settings
from vaultfs.errors import ConfigError, CorruptionError, StoreSetupError
from vaultfs.store import (
    ArchiveStore,
    LocalStore,
    ObjectArchived,
    ObjectExists,
    ObjectNotFound,
    ObjectStore,
    RetryingStore,
    StoreError,
    StoreRefused,
    open_store,
)
from vaultfs.store.faults import FaultyStore
from vaultfs.store.local import TEMP_PREFIX

MiB = 1024**2
PREFIX = "vault"


def s3_settings(endpoint_url: str) -> S3Settings:
    return S3Settings(
        endpoint_url=endpoint_url,
        region="us-east-1",
        multipart_threshold=5 * MiB,
        multipart_chunksize=5 * MiB,
    )


@dataclass
class Backend:
    kind: str
    store: ArchiveStore
    raw: ArchiveStore  # the backend under any wrappers
    make_incomplete_upload: Callable[[str], None]
    s3: S3Bucket | None = None
    faults: FaultyStore | None = None

    @property
    def faulty(self) -> bool:
        return self.faults is not None

    def incomplete_uploads(self) -> list[str]:
        if self.s3 is None:
            root = self.raw.root  # type: ignore[attr-defined]
            return [p.name for p in root.rglob(f"{TEMP_PREFIX}*")]
        answer = self.s3.client().list_multipart_uploads(Bucket=self.s3.name)
        return [u["Key"] for u in answer.get("Uploads", [])]


def _local(tmp_path: Path) -> tuple[ArchiveStore, Callable[[str], None]]:
    store = LocalStore(tmp_path / "store")
    store.check_access()

    def make_incomplete_upload(key: str) -> None:
        path = store.root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        (path.parent / f"{TEMP_PREFIX}crashed").write_bytes(b"half")

    return store, make_incomplete_upload


def _s3(bucket: S3Bucket) -> tuple[ArchiveStore, Callable[[str], None]]:
    from vaultfs.store.s3 import S3Store

    store = S3Store(bucket.name, PREFIX, s3_settings(bucket.endpoint_url))

    def make_incomplete_upload(key: str) -> None:
        bucket.client().create_multipart_upload(Bucket=bucket.name, Key=f"{PREFIX}/{key}")

    return store, make_incomplete_upload


@pytest.fixture(
    params=[
        "local",
        pytest.param("s3", marks=pytest.mark.s3),
        "faulty-local",
        pytest.param("faulty-s3", marks=pytest.mark.s3),
    ]
)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    kind: str = request.param
    bucket: S3Bucket | None = None
    if kind.endswith("s3"):
        bucket = request.getfixturevalue("s3_bucket")
        raw, make_upload = _s3(bucket)
    else:
        raw, make_upload = _local(tmp_path)
    if not kind.startswith("faulty"):
        yield Backend(kind, raw, raw, make_upload, bucket)
        return
    faults = FaultyStore(raw, rate=0.4, seed=sum(map(ord, request.node.name)))
    store = RetryingStore(faults, attempts=25, sleep=lambda _: None)
    yield Backend(kind, store, raw, make_upload, bucket, faults)


def _file(tmp_path: Path, name: str, size: int) -> tuple[Path, bytes]:
    path = tmp_path / name
    data = os.urandom(size)
    path.write_bytes(data)
    return path, hashlib.sha256(data).digest()


class Progress:
    def __init__(self) -> None:
        self.calls: list[int] = []

    def __call__(self, n: int) -> None:
        self.calls.append(n)

    @property
    def total(self) -> int:
        return sum(self.calls)


# -- the conformance suite ---------------------------------------------------


def test_protocols(backend: Backend) -> None:
    assert isinstance(backend.store, ObjectStore)
    assert isinstance(backend.store, ArchiveStore)
    assert backend.store.url.startswith(("file:///", "s3://"))


def test_put_get_overwrite(backend: Backend) -> None:
    store = backend.store
    store.put("a/b/c.json", b"one")
    assert store.get("a/b/c.json") == b"one"
    store.put("a/b/c.json", b"two!")
    assert store.get("a/b/c.json") == b"two!"
    store.put("empty", b"")
    assert store.get("empty") == b""
    assert store.head("empty").size == 0


def test_get_range(backend: Backend) -> None:
    store = backend.store
    data = bytes(range(256)) * 4
    store.put("r", data)
    assert store.get_range("r", 0, 10) == data[:10]
    assert store.get_range("r", 300, 100) == data[300:400]
    assert store.get_range("r", 1000, 100) == data[1000:]  # crosses the end: fewer bytes
    assert store.get_range("r", 1023, 1) == data[1023:]
    assert store.get_range("r", 1024, 10) == b""  # at the end
    assert store.get_range("r", 5000, 10) == b""  # beyond it
    assert store.get_range("r", 5, 0) == b""


def test_if_none_match(backend: Backend) -> None:
    store = backend.store
    store.put("versions/photos/1.json", b"first", if_none_match=True)
    with pytest.raises(ObjectExists):
        store.put("versions/photos/1.json", b"second", if_none_match=True)
    assert store.get("versions/photos/1.json") == b"first"


def test_put_file_small(backend: Backend, tmp_path: Path) -> None:
    path, sha = _file(tmp_path, "small", 100_000)
    progress = Progress()
    backend.store.put_file("bands/small.tar.zst", path, sha256=sha, progress=progress)
    assert progress.total == 100_000
    assert backend.store.get("bands/small.tar.zst") == path.read_bytes()
    assert backend.store.head("bands/small.tar.zst").size == 100_000


def test_put_file_multipart(backend: Backend, tmp_path: Path) -> None:
    size = 12 * MiB + 12345
    path, sha = _file(tmp_path, "big", size)
    progress = Progress()
    backend.store.put_file("bands/big.tar.zst", path, sha256=sha, progress=progress)
    assert progress.total == size
    if backend.kind == "s3":
        assert progress.calls == [5 * MiB, 5 * MiB, size - 10 * MiB]  # one call per part
    data = path.read_bytes()
    assert backend.store.head("bands/big.tar.zst").size == size
    assert backend.store.get_range("bands/big.tar.zst", 5 * MiB - 10, 20) == data[5 * MiB - 10 : 5 * MiB + 10]
    assert backend.store.get("bands/big.tar.zst") == data
    assert backend.incomplete_uploads() == []


@pytest.fixture
def other_fs_dir() -> Iterator[Path]:
    """A directory on another filesystem than tmp_path (tmpfs), so a local store must copy."""
    path = Path(tempfile.mkdtemp(dir="/dev/shm"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.parametrize("size", [1000, 6 * MiB])
def test_put_file_wrong_sha_publishes_nothing(backend: Backend, other_fs_dir: Path, size: int) -> None:
    # A file on another filesystem: a local store copies it and must verify the copy.
    path, _ = _file(other_fs_dir, "f", size)
    with pytest.raises(CorruptionError, match="SHA-256"):
        backend.store.put_file("bands/f", path, sha256=hashlib.sha256(b"other").digest())
    with pytest.raises(ObjectNotFound):
        backend.store.head("bands/f")
    assert backend.incomplete_uploads() == []


def test_local_put_file_links_on_the_same_filesystem(tmp_path: Path) -> None:
    """Same filesystem: the object is a hard link to the spool file, nothing is copied."""
    store = LocalStore(tmp_path / "store")
    store.check_access()
    path, sha = _file(tmp_path, "band", 3 * MiB)
    progress = Progress()
    store.put_file("bands/b.tar.zst", path, sha256=sha, progress=progress)
    obj = tmp_path / "store" / "bands" / "b.tar.zst"
    assert os.stat(obj).st_ino == os.stat(path).st_ino
    assert progress.total == 3 * MiB
    path.unlink()  # the snapshot removes its spool file after the upload
    assert store.get("bands/b.tar.zst") == obj.read_bytes() and obj.stat().st_nlink == 1


def test_get_to_file(backend: Backend, tmp_path: Path) -> None:
    data = os.urandom(3 * MiB + 7)
    backend.store.put("bands/x", data)
    progress = Progress()
    target = tmp_path / "out" / "x"
    backend.store.get_to_file("bands/x", target, progress)
    assert target.read_bytes() == data
    assert progress.total == len(data)
    assert [p.name for p in target.parent.iterdir()] == ["x"]  # no temp files left


def test_list(backend: Backend) -> None:
    store = backend.store
    keys = ["bands/b", "bands/a", "bands/a.catalog.zst", "bandsx", "index/1", "versions/p/1.json"]
    for i, key in enumerate(keys):
        store.put(key, b"x" * i)
    assert [i.key for i in store.list("")] == sorted(keys)
    assert [i.key for i in store.list("bands/")] == ["bands/a", "bands/a.catalog.zst", "bands/b"]
    assert [i.key for i in store.list("bands")] == ["bands/a", "bands/a.catalog.zst", "bands/b", "bandsx"]
    assert [i.key for i in store.list("bands/a")] == ["bands/a", "bands/a.catalog.zst"]
    assert [i.key for i in store.list("versions/p/")] == ["versions/p/1.json"]
    assert list(store.list("nothing/")) == []
    sizes = {i.key: (i.size, i.storage_class) for i in store.list("")}
    assert sizes["bands/a"] == (1, "STANDARD")
    assert sizes["versions/p/1.json"] == (5, "STANDARD")


def test_list_many_in_order(backend: Backend) -> None:
    keys = [f"bands/{n:04d}" for n in range(40)]
    for key in reversed(keys):
        backend.store.put(key, b"")
    assert [i.key for i in backend.store.list("bands/")] == keys


def test_head(backend: Backend) -> None:
    backend.store.put("h", b"12345")
    info = backend.store.head("h")
    assert (info.key, info.size, info.storage_class, info.restore) == ("h", 5, "STANDARD", None)


def test_delete(backend: Backend) -> None:
    store = backend.store
    store.put("d/1", b"x")
    store.delete("d/1")
    with pytest.raises(ObjectNotFound):
        store.get("d/1")
    store.delete("d/1")  # absent: not an error
    store.delete("never/was")
    assert list(store.list("d/")) == []


def test_not_found(backend: Backend, tmp_path: Path) -> None:
    store = backend.store
    for call in (
        lambda: store.get("missing"),
        lambda: store.get_range("missing", 0, 10),
        lambda: store.head("missing"),
        lambda: store.get_to_file("missing", tmp_path / "m"),
        lambda: store.copy_to_class("missing", "STANDARD"),
    ):
        with pytest.raises(ObjectNotFound):
            call()
    assert not (tmp_path / "m").exists()


def test_abort_incomplete_uploads(backend: Backend) -> None:
    backend.store.put("bands/done", b"ok")
    backend.make_incomplete_upload("bands/crashed.tar.zst")
    assert len(backend.incomplete_uploads()) == 1
    assert [i.key for i in backend.store.list("")] == ["bands/done"]  # never listed
    assert backend.store.abort_incomplete_uploads("index/") == 0
    count = backend.store.abort_incomplete_uploads("bands/")
    # A lost answer makes the retry find nothing left to abort.
    assert count == 1 or (backend.faulty and count == 0)
    assert backend.incomplete_uploads() == []
    assert backend.store.get("bands/done") == b"ok"


@pytest.mark.parametrize("backend", ["faulty-local", "faulty-s3"], indirect=True)
def test_faults_were_injected(backend: Backend) -> None:
    assert backend.faults is not None
    for n in range(30):
        backend.store.put(f"k/{n}", b"v", if_none_match=True)
        assert backend.store.get(f"k/{n}") == b"v"
    assert backend.faults.total_injected > 10
    assert set(backend.faults.injected) == {"throttle", "reset", "timeout", "lost_reply"}


# -- local only ----------------------------------------------------------------


def test_local_rejects_escaping_keys(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    for key in ("", "/abs", "../up", "a/../../b", "a//b", "a/./b", f"a/{TEMP_PREFIX}x"):
        with pytest.raises(ValueError):
            store.put(key, b"x")


def test_local_check_access(tmp_path: Path) -> None:
    LocalStore(tmp_path / "new").check_access()
    assert (tmp_path / "new").is_dir()
    assert list((tmp_path / "new").iterdir()) == []
    with pytest.raises(StoreSetupError, match="does not exist"):
        LocalStore(tmp_path / "no" / "such").check_access()
    (tmp_path / "file").write_text("")
    with pytest.raises(StoreSetupError, match="not a directory"):
        LocalStore(tmp_path / "file").check_access()
    if os.geteuid() != 0:
        (tmp_path / "ro").mkdir(mode=0o555)
        with pytest.raises(StoreSetupError, match="cannot create"):
            LocalStore(tmp_path / "ro" / "store").check_access()


def test_local_archive_calls_are_noops(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.put("b", b"x")
    store.copy_to_class("b", "DEEP_ARCHIVE")
    store.restore("b", 1, "Bulk")
    assert store.head("b").storage_class == "STANDARD"
    assert store.get("b") == b"x"


# -- S3 only -------------------------------------------------------------------


@pytest.fixture(params=["s3", "faulty-s3"])
def s3_backend(request: pytest.FixtureRequest, s3_bucket: S3Bucket) -> Backend:
    raw, make_upload = _s3(s3_bucket)
    if request.param == "s3":
        return Backend("s3", raw, raw, make_upload, s3_bucket)
    faults = FaultyStore(raw, rate=0.4, seed=7)
    store = RetryingStore(faults, attempts=25, sleep=lambda _: None)
    return Backend("faulty-s3", store, raw, make_upload, s3_bucket, faults)


@pytest.mark.s3
def test_s3_keys_live_under_the_prefix(s3_backend: Backend) -> None:
    s3_backend.store.put("bands/a", b"x")
    assert s3_backend.s3 is not None
    client = s3_backend.s3.client()
    listed = client.list_objects_v2(Bucket=s3_backend.s3.name)["Contents"]
    assert [o["Key"] for o in listed] == ["vault/bands/a"]


@pytest.mark.s3
def test_s3_put_file_sends_sha256(s3_backend: Backend, tmp_path: Path) -> None:
    assert s3_backend.s3 is not None
    client = s3_backend.s3.client()
    for name, size in (("small", 1000), ("big", 11 * MiB)):
        path, sha = _file(tmp_path, name, size)
        s3_backend.store.put_file(f"bands/{name}", path, sha256=sha)
        head = client.head_object(
            Bucket=s3_backend.s3.name, Key=f"vault/bands/{name}", ChecksumMode="ENABLED"
        )
        if size < 5 * MiB:
            assert head["ChecksumSHA256"] == base64.b64encode(sha).decode()
        else:
            assert "ChecksumSHA256" in head  # composite: a checksum of the part checksums


@pytest.mark.s3
def test_s3_put_file_in_a_storage_class(s3_backend: Backend, tmp_path: Path) -> None:
    """A warm band's upload (`[s3].warm_class`): single PUT and multipart, through the
    retry and fault layers too, land in the class asked for."""
    for name, size in (("small", 1000), ("big", 11 * MiB)):
        path, sha = _file(tmp_path, name, size)
        s3_backend.store.put_file(f"bands/{name}", path, sha256=sha, storage_class="STANDARD_IA")
        info = s3_backend.store.head(f"bands/{name}")
        assert (info.storage_class, info.size) == ("STANDARD_IA", size)


@pytest.mark.s3
def test_s3_archive_and_restore(s3_backend: Backend) -> None:
    store = s3_backend.store
    store.put("bands/cold", b"frozen bytes")
    store.copy_to_class("bands/cold", "DEEP_ARCHIVE")
    info = store.head("bands/cold")
    assert (info.storage_class, info.size, info.restore) == ("DEEP_ARCHIVE", 12, None)
    assert [i.storage_class for i in store.list("bands/")] == ["DEEP_ARCHIVE"]
    with pytest.raises(ObjectArchived):
        store.get("bands/cold")
    with pytest.raises(ObjectArchived):
        store.get_range("bands/cold", 0, 4)
    store.copy_to_class("bands/cold", "DEEP_ARCHIVE")  # already there: nothing to do
    store.restore("bands/cold", 1, "Bulk")
    restored = store.head("bands/cold")
    assert restored.restore is not None and 'ongoing-request="false"' in restored.restore
    assert store.get("bands/cold") == b"frozen bytes"


@pytest.mark.s3
def test_s3_copy_to_class_multipart(s3_backend: Backend, tmp_path: Path) -> None:
    s3_backend.raw.copy_part_threshold = 5 * MiB  # type: ignore[attr-defined]
    path, sha = _file(tmp_path, "big", 11 * MiB)
    s3_backend.store.put_file("bands/big", path, sha256=sha)
    s3_backend.store.copy_to_class("bands/big", "GLACIER_IR")  # readable archive class
    info = s3_backend.store.head("bands/big")
    assert (info.storage_class, info.size) == ("GLACIER_IR", 11 * MiB)
    assert s3_backend.store.get("bands/big") == path.read_bytes()
    assert s3_backend.incomplete_uploads() == []


@pytest.mark.s3
def test_s3_check_access_ok(s3_backend: Backend) -> None:
    s3_backend.store.check_access()


@pytest.mark.s3
def test_s3_check_access_missing_bucket(s3_bucket: S3Bucket) -> None:
    from vaultfs.store.s3 import S3Store

    store = S3Store("no-such-bucket", "", s3_settings(s3_bucket.endpoint_url))
    with pytest.raises(StoreSetupError, match="no such bucket no-such-bucket at ") as e:
        store.check_access()
    assert "vaultfs never creates buckets" in e.value.message


@pytest.mark.s3
def test_s3_check_access_unreachable_endpoint() -> None:
    from vaultfs.store.s3 import S3Store

    endpoint = f"http://127.0.0.1:{free_port()}"  # closed: nothing listens there
    store = S3Store("bucket", "", s3_settings(endpoint))
    started = time.monotonic()
    with pytest.raises(StoreSetupError) as e:
        store.check_access()
    assert time.monotonic() - started < 5
    assert e.value.message == (
        f"cannot reach the S3 endpoint {endpoint}: check [s3].endpoint_url and the network"
    )
    assert e.value.exit_code == 2


@pytest.mark.s3
def test_s3_check_access_no_credentials(s3_bucket: S3Bucket, monkeypatch: pytest.MonkeyPatch) -> None:
    from vaultfs.store.s3 import S3Store

    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    store = S3Store(s3_bucket.name, "", s3_settings(s3_bucket.endpoint_url))
    with pytest.raises(StoreSetupError, match="no S3 credentials found"):
        store.check_access()


@pytest.mark.s3
def test_s3_missing_profile(s3_bucket: S3Bucket) -> None:
    from vaultfs.store.s3 import S3Store

    settings = S3Settings(endpoint_url=s3_bucket.endpoint_url, profile="nope")
    with pytest.raises(StoreSetupError, match="profile 'nope' not found"):
        S3Store(s3_bucket.name, "", settings)


@pytest.mark.s3
def test_s3_credentials_checked(s3_auth_server: AuthServer, monkeypatch: pytest.MonkeyPatch) -> None:
    from vaultfs.store.s3 import S3Store

    settings = s3_settings(s3_auth_server.endpoint_url)
    for name, value in s3_auth_server.good.items():
        monkeypatch.setenv(name, value)
    good = S3Store(s3_auth_server.bucket, "v", settings)
    good.check_access()
    good.put("x", b"signed")
    assert good.get("x") == b"signed"

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAWRONGWRONGWRONG1")
    bad = S3Store(s3_auth_server.bucket, "v", settings)
    with pytest.raises(StoreSetupError) as e:
        bad.check_access()
    assert e.value.message.startswith("the S3 credentials were refused (InvalidAccessKeyId)")
    assert "AWS_ACCESS_KEY_ID" in e.value.message
    with pytest.raises(StoreError, match="InvalidAccessKeyId") as refused:
        bad.get("x")
    assert not refused.value.transient

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_auth_server.good["AWS_ACCESS_KEY_ID"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret")
    with pytest.raises(StoreSetupError, match=r"refused \(SignatureDoesNotMatch\)"):
        S3Store(s3_auth_server.bucket, "v", settings).check_access()


@pytest.mark.s3
def test_s3_error_classification() -> None:
    import botocore.exceptions as bex

    from vaultfs.store.s3_errors import classify

    def client_error(code: str, status: int) -> bex.ClientError:
        response: Any = {
            "Error": {"Code": code, "Message": "m"},
            "ResponseMetadata": {"HTTPStatusCode": status},
        }
        return bex.ClientError(response, "GetObject")

    def check(exc: Exception) -> StoreError:
        return classify(exc, what="GET s3://b/k", bucket="b")

    for code, status in [
        ("SlowDown", 503),
        ("Throttling", 400),
        ("InternalError", 500),
        ("RequestTimeout", 400),
        ("ServiceUnavailable", 503),
        ("503", 503),
    ]:
        assert check(client_error(code, status)).transient, code
    for exc in [
        bex.EndpointConnectionError(endpoint_url="http://x"),
        bex.ReadTimeoutError(endpoint_url="http://x"),
        bex.ConnectionClosedError(endpoint_url="http://x"),
        ConnectionResetError(104, "Connection reset by peer"),
    ]:
        assert check(exc).transient, exc
    for code, status in [
        ("AccessDenied", 403),
        ("InvalidAccessKeyId", 403),
        ("SignatureDoesNotMatch", 403),
        ("NoSuchBucket", 404),
    ]:
        err = check(client_error(code, status))
        assert not err.transient and type(err) is StoreRefused and err.exit_code == 2, code
    assert "no such bucket b" in check(client_error("NoSuchBucket", 404)).message
    assert isinstance(check(client_error("InvalidObjectState", 403)), ObjectArchived)
    assert isinstance(check(client_error("NoSuchKey", 404)), ObjectNotFound)
    assert isinstance(check(client_error("404", 404)), ObjectNotFound)
    assert isinstance(check(client_error("PreconditionFailed", 412)), ObjectExists)
    assert not check(bex.NoCredentialsError()).transient


# -- open_store ------------------------------------------------------------------


def test_open_store(tmp_path: Path) -> None:
    store = open_store(f"file://{tmp_path}/s", S3Settings())
    assert isinstance(store, RetryingStore) and isinstance(store.inner, LocalStore)
    assert store.inner.root == tmp_path / "s"
    assert store.url == f"file://{tmp_path}/s"

    s3 = open_store("s3://my-bucket/some/prefix/", S3Settings(endpoint_url="http://127.0.0.1:1"))
    assert isinstance(s3, RetryingStore)
    assert (s3.inner.bucket, s3.inner.prefix) == ("my-bucket", "some/prefix")  # type: ignore[attr-defined]
    assert s3.url == "s3://my-bucket/some/prefix"
    for bad in ("/srv/x", "file://relative/x", "s3:///prefix", "gs://b/p", "file:///x?y=1"):
        with pytest.raises(ConfigError, match=r"\[vault\].store"):
            open_store(bad, S3Settings())


def test_import_does_not_load_boto3() -> None:
    code = "import sys, vaultfs.store; assert 'boto3' not in sys.modules, 'boto3 imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


# -- RetryingStore and FaultyStore -------------------------------------------------


class Flaky:
    """An inner store whose calls fail with ``errors`` (in order) before succeeding."""

    url = "mem://"

    def __init__(self, *errors: StoreError) -> None:
        self.errors = list(errors)
        self.calls = 0
        self.objects: dict[str, bytes] = {}

    def _step(self) -> None:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)

    def put(self, key: str, data: bytes, *, if_none_match: bool = False) -> None:
        if if_none_match and key in self.objects:
            raise ObjectExists(key)
        self.objects[key] = data
        self._step()  # fails *after* writing: a lost answer

    def get(self, key: str) -> bytes:
        self._step()
        return self.objects[key]

    def put_file(
        self, key: str, path: Path, *, sha256: bytes, progress: object = None, storage_class: str = "STANDARD"
    ) -> None:
        assert callable(progress)
        progress(10)
        progress(10)
        self._step()
        progress(10)


def transient(msg: str = "503") -> StoreError:
    return StoreError(msg, transient=True)


def test_retry_transient_then_success() -> None:
    sleeps: list[float] = []
    inner = Flaky(transient(), transient())
    inner.objects["k"] = b"v"
    store = RetryingStore(inner, attempts=3, base_delay=1.0, sleep=sleeps.append)  # type: ignore[arg-type]
    assert store.get("k") == b"v"
    assert inner.calls == 3 and store.retries == 2
    assert len(sleeps) == 2 and 0 <= sleeps[0] <= 1.0 and 0 <= sleeps[1] <= 2.0


def test_retry_gives_up_and_never_retries_permanent() -> None:
    inner = Flaky(transient("a"), transient("b"), transient("c"))
    inner.objects["k"] = b"v"
    store = RetryingStore(inner, attempts=3, sleep=lambda _: None)  # type: ignore[arg-type]
    with pytest.raises(StoreError, match="c"):
        store.get("k")
    inner = Flaky(StoreError("denied"))
    store = RetryingStore(inner, attempts=3, sleep=lambda _: None)  # type: ignore[arg-type]
    with pytest.raises(StoreError, match="denied"):
        store.get("k")
    assert inner.calls == 1


def test_retry_conditional_put_with_lost_answer() -> None:
    inner = Flaky(transient())  # the first put writes, then its answer is lost
    store = RetryingStore(inner, sleep=lambda _: None)  # type: ignore[arg-type]
    store.put("v/1", b"record", if_none_match=True)
    assert inner.objects["v/1"] == b"record"
    inner = Flaky(transient())
    inner.objects["v/1"] = b"someone else's"
    store = RetryingStore(inner, sleep=lambda _: None)  # type: ignore[arg-type]
    with pytest.raises(ObjectExists):
        store.put("v/1", b"record", if_none_match=True)


def test_retry_reports_progress_once(tmp_path: Path) -> None:
    inner = Flaky(transient(), transient())
    store = RetryingStore(inner, sleep=lambda _: None)  # type: ignore[arg-type]
    progress = Progress()
    store.put_file("k", tmp_path, sha256=b"", progress=progress)
    assert progress.total == 30 and inner.calls == 3


def test_faulty_store_is_deterministic(tmp_path: Path) -> None:
    def run(seed: int) -> list[str]:
        store = FaultyStore(LocalStore(tmp_path), rate=0.5, seed=seed)
        outcome = []
        for n in range(50):
            try:
                store.put(f"k{n}", b"x")
                outcome.append("ok")
            except StoreError as e:
                assert e.transient
                outcome.append(e.message)
        assert store.total_injected == sum(o != "ok" for o in outcome)
        return outcome

    assert run(1) == run(1)
    assert run(1) != run(2)
    assert 10 < sum(o != "ok" for o in run(3)) < 40


@pytest.mark.s3
def test_s3_transient_answers_on_the_wire(s3_bucket: S3Bucket) -> None:
    """A real 503 SlowDown (injected before sending) is transient; RetryingStore gets through."""
    from botocore.awsrequest import AWSResponse, HTTPHeaders

    from vaultfs.store.s3 import S3Store

    class Raw:
        def __init__(self, body: bytes) -> None:
            self.body = body

        def stream(self, **_: object) -> Iterator[bytes]:
            yield self.body

        def read(self, *_: object) -> bytes:
            body, self.body = self.body, b""
            return body

    inner = S3Store(s3_bucket.name, PREFIX, s3_settings(s3_bucket.endpoint_url), max_attempts=1)
    inner.put("k", b"v")
    slow_downs = [2]

    def throttle(request: Any, **_: object) -> AWSResponse | None:
        if slow_downs[0] == 0:
            return None
        slow_downs[0] -= 1
        body = b"<Error><Code>SlowDown</Code><Message>Reduce your request rate.</Message></Error>"
        return AWSResponse(request.url, 503, HTTPHeaders(), Raw(body))

    inner._client.meta.events.register("before-send.s3.GetObject", throttle)
    with pytest.raises(StoreError, match="SlowDown") as e:
        inner.get("k")
    assert e.value.transient
    assert slow_downs == [1]  # max_attempts=1: botocore itself did not retry
    slow_downs[0] = 2
    sleeps: list[float] = []
    assert RetryingStore(inner, sleep=sleeps.append).get("k") == b"v"
    assert len(sleeps) == 2


@pytest.mark.parametrize("size", [1000, 12 * MiB])
def test_s3_upload_is_verified_by_its_stored_checksum(s3_bucket: S3Bucket, tmp_path: Path, size: int) -> None:
    """After an upload the object's SHA-256 checksum (composite for multipart) is compared;
    a server reporting another one is caught (moto never lies, so its answer is altered)."""
    from vaultfs.store.s3 import S3Store

    store = S3Store(s3_bucket.name, PREFIX, s3_settings(s3_bucket.endpoint_url), max_attempts=1)
    path, sha = _file(tmp_path, "band", size)
    store.put_file("bands/good.tar.zst", path, sha256=sha)  # the true checksum passes

    def lie(parsed: dict[str, Any], **_: object) -> None:
        if "ChecksumSHA256" in parsed:
            parsed["ChecksumSHA256"] = base64.b64encode(b"x" * 32).decode()

    store._client.meta.events.register("after-call.s3.HeadObject", lie)
    with pytest.raises(CorruptionError, match="stored SHA-256 checksum"):
        store.put_file("bands/bad.tar.zst", path, sha256=sha)
