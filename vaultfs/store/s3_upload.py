"""Writing one object of an `S3Store` from a file, and the checks that it arrived whole.

`put_file` sends PutObject below ``multipart_threshold``, else a multipart
upload; every request carries the SHA-256 of its bytes (whole object, or one
per part), so S3 itself refuses bytes that differ from what was hashed
locally, and a HEAD afterwards checks the stored size and checksum. A failed
multipart upload is aborted. `copy_multipart` rewrites a large object onto
itself in another storage class with UploadPartCopy.

Imported only with `vaultfs.store.s3` (it imports botocore).
"""

from __future__ import annotations

import base64
import hashlib
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import botocore.exceptions as bex

from vaultfs import testpoints
from vaultfs.config import RateSchedule, S3Settings
from vaultfs.errors import CorruptionError
from vaultfs.store.base import ProgressCallback, StoreError, StoreRefused
from vaultfs.store.limit import Limiter
from vaultfs.store.s3_errors import error_code

log = logging.getLogger(__name__)

MiB = 1024**2
GiB = 1024**3
MIN_PART = 5 * MiB  # S3's smallest part (except the last)
MAX_PARTS = 10_000
MAX_SINGLE_PUT = 5 * GiB  # largest PutObject / CopyObject


@dataclass(frozen=True, slots=True)
class Target:
    """One object of a store being written, and how its store names a failure."""

    client: Any  # the store's boto3 client
    bucket: str
    key: str  # the store's key, for messages
    s3key: str  # the S3 key (the store's prefix included)
    url: str  # ``s3://bucket/prefix/key``, for messages
    error: Callable[[Exception, str], StoreError]  # (failure, operation) -> the store's StoreError


def b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode("ascii")


def put_file(
    target: Target,
    path: Path,
    settings: S3Settings,
    sha256: bytes,
    progress: ProgressCallback | None,
    storage_class: str = "STANDARD",
    limiter: Limiter | None = None,
) -> None:
    """`S3Store.put_file`: upload ``path`` into ``storage_class``, then check what S3 stored
    (see the module); the bytes sent are charged to `limiter`."""
    limiter = limiter or Limiter(RateSchedule())
    size = path.stat().st_size
    threshold = min(settings.multipart_threshold, MAX_SINGLE_PUT)
    if size < threshold or size == 0:  # a multipart upload needs a part
        _put_small(target, path, sha256, storage_class, limiter)
        expected = b64(sha256)
        if progress is not None:
            progress(size)
    else:
        expected = _put_multipart(target, path, size, sha256, settings, progress, storage_class, limiter)
    _verify_stored(target, path, size, expected, storage_class)


def _verify_stored(target: Target, path: Path, size: int, expected: str, storage_class: str) -> None:
    """HEAD with checksums: the stored object must have our size, SHA-256 checksum and class.

    A multipart object's checksum is S3's composite one (the SHA-256 of the
    parts' SHA-256s, "-N" appended); servers that keep no checksum are
    checked by size alone (logged).
    """
    try:
        answer = target.client.head_object(Bucket=target.bucket, Key=target.s3key, ChecksumMode="ENABLED")
    except (bex.ClientError, bex.BotoCoreError, OSError) as e:
        raise target.error(e, "HEAD") from e
    stored_size = int(answer["ContentLength"])
    if stored_size != size:
        raise CorruptionError(f"upload of {path} to {target.url}: stored size {stored_size} != {size}")
    stored_class = answer.get("StorageClass") or "STANDARD"  # absent: STANDARD
    if stored_class != storage_class:
        raise StoreRefused(
            f"upload of {path} to {target.url}: stored in {stored_class}, not {storage_class}: "
            "the service does not keep this storage class; set [s3].warm_class to one it has"
        )
    stored = answer.get("ChecksumSHA256")
    if stored is None:
        log.info("%s: the server keeps no SHA-256 checksum; size verified", target.url)
        return
    if stored.split("-")[0] != expected.split("-")[0]:
        raise CorruptionError(
            f"upload of {path} to {target.url}: stored SHA-256 checksum {stored} "
            f"!= {expected}: the object is damaged; it will be uploaded again"
        )


def _class_arg(storage_class: str) -> dict[str, str]:
    """The StorageClass argument of an upload: none for STANDARD (S3's default), so a
    service that knows no classes is never sent one it did not need."""
    return {} if storage_class == "STANDARD" else {"StorageClass": storage_class}


def _put_small(target: Target, path: Path, sha256: bytes, storage_class: str, limiter: Limiter) -> None:
    data = path.read_bytes()
    digest = hashlib.sha256(data).digest()
    if digest != sha256:
        raise _changed(path, sha256, digest)
    try:
        target.client.put_object(
            Bucket=target.bucket,
            Key=target.s3key,
            Body=limiter.body(data),
            ChecksumAlgorithm="SHA256",
            ChecksumSHA256=b64(digest),
            **_class_arg(storage_class),
        )
    except (bex.ClientError, bex.BotoCoreError, OSError) as e:
        raise _upload_error(target, e, path) from e


def _part_size(settings: S3Settings, size: int) -> int:
    return max(settings.multipart_chunksize, MIN_PART, math.ceil(size / MAX_PARTS))


def _put_multipart(
    target: Target,
    path: Path,
    size: int,
    sha256: bytes,
    settings: S3Settings,
    progress: ProgressCallback | None,
    storage_class: str,
    limiter: Limiter,
) -> str:
    """Upload in parts; return the composite checksum S3 should report."""
    part_size = _part_size(settings, size)
    client, bucket, s3key = target.client, target.bucket, target.s3key
    try:
        upload_id = client.create_multipart_upload(
            Bucket=bucket, Key=s3key, ChecksumAlgorithm="SHA256", **_class_arg(storage_class)
        )["UploadId"]
    except (bex.ClientError, bex.BotoCoreError, OSError) as e:
        raise target.error(e, "CreateMultipartUpload") from e
    try:
        whole = hashlib.sha256()
        parts: list[dict[str, Any]] = []
        with open(path, "rb") as f:
            number = 0
            while chunk := f.read(part_size):
                number += 1
                whole.update(chunk)
                part_sum = b64(hashlib.sha256(chunk).digest())
                answer = client.upload_part(
                    Bucket=bucket,
                    Key=s3key,
                    UploadId=upload_id,
                    PartNumber=number,
                    Body=limiter.body(chunk),
                    ChecksumAlgorithm="SHA256",
                    ChecksumSHA256=part_sum,
                )
                parts.append({"PartNumber": number, "ETag": answer["ETag"], "ChecksumSHA256": part_sum})
                testpoints.reach("multipart-part-uploaded")
                if progress is not None:
                    progress(len(chunk))
        if whole.digest() != sha256:
            raise _changed(path, sha256, whole.digest())
        client.complete_multipart_upload(
            Bucket=bucket,
            Key=s3key,
            UploadId=upload_id,
            MultipartUpload={"Parts": parts},
        )
    except BaseException as e:
        abort(target, upload_id)
        if isinstance(e, (bex.ClientError, bex.BotoCoreError, OSError)):
            raise _upload_error(target, e, path) from e
        raise
    composite = hashlib.sha256(b"".join(base64.b64decode(p["ChecksumSHA256"]) for p in parts))
    return f"{b64(composite.digest())}-{len(parts)}"


def _upload_error(target: Target, exc: Exception, path: Path) -> Exception:
    if isinstance(exc, bex.ClientError) and error_code(exc) in ("BadDigest", "InvalidDigest"):
        return CorruptionError(
            f"upload of {path} to {target.url}: S3 received bytes that do not match "
            f"their SHA-256 ({error_code(exc)}): the file changed, or the network corrupts data"
        )
    if isinstance(exc, OSError) and not isinstance(exc, (ConnectionError, TimeoutError)):
        raise exc  # reading the local file failed: not a store problem
    return target.error(exc, "PUT")


def abort(target: Target, upload_id: str) -> None:
    """Abort a multipart upload, best effort."""
    try:
        target.client.abort_multipart_upload(Bucket=target.bucket, Key=target.s3key, UploadId=upload_id)
    except (bex.ClientError, bex.BotoCoreError, OSError) as e:
        # Left for abort_incomplete_uploads (run at the start of every snapshot).
        log.info("could not abort multipart upload of %s: %s", target.s3key, e)


def copy_multipart(target: Target, size: int, storage_class: str, settings: S3Settings) -> None:
    """Rewrite the object onto itself in ``storage_class`` with UploadPartCopy (metadata kept)."""
    client, bucket, s3key = target.client, target.bucket, target.s3key
    try:
        head = client.head_object(Bucket=bucket, Key=s3key)
        upload_id = client.create_multipart_upload(
            Bucket=bucket,
            Key=s3key,
            StorageClass=storage_class,
            Metadata=head.get("Metadata", {}),
            **({"ContentType": head["ContentType"]} if head.get("ContentType") else {}),
        )["UploadId"]
    except (bex.ClientError, bex.BotoCoreError, OSError) as e:
        raise target.error(e, "COPY") from e
    part_size = _part_size(settings, size)
    try:
        parts = []
        for number, start in enumerate(range(0, size, part_size), start=1):
            end = min(start + part_size, size) - 1
            answer = client.upload_part_copy(
                Bucket=bucket,
                Key=s3key,
                UploadId=upload_id,
                PartNumber=number,
                CopySource={"Bucket": bucket, "Key": s3key},
                CopySourceRange=f"bytes={start}-{end}",
            )
            parts.append({"PartNumber": number, "ETag": answer["CopyPartResult"]["ETag"]})
        client.complete_multipart_upload(
            Bucket=bucket, Key=s3key, UploadId=upload_id, MultipartUpload={"Parts": parts}
        )
    except BaseException as e:
        abort(target, upload_id)
        if isinstance(e, (bex.ClientError, bex.BotoCoreError, OSError)):
            raise target.error(e, "COPY") from e
        raise


def _changed(path: Path, expected: bytes, got: bytes) -> CorruptionError:
    return CorruptionError(
        f"{path} no longer matches its SHA-256 (expected {expected.hex()}, read {got.hex()}): "
        "the file changed while it was backed up, or the disk is failing"
    )
