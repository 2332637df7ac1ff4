"""A store in an S3 bucket (``s3://bucket/prefix``) — the only module that imports boto3.

Talks to AWS or any S3-compatible endpoint (``[s3].endpoint_url``: MinIO,
Ceph, moto in the tests). Credentials come from boto3's normal chain (env,
``[s3].profile``/shared files, instance roles) and are never logged.

Every botocore failure goes through `classify` and leaves as a `StoreError`
whose ``transient`` flag says whether retrying may help; botocore retries
individual requests (standard mode) and `retry.RetryingStore` retries whole
operations. Uploads carry SHA-256 checksums (whole object, or one per part for
multipart), so S3 itself refuses bytes that differ from what was hashed
locally.

Concurrency: one boto3 client per store, which botocore documents as safe to
share between threads.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import math
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import botocore.exceptions as bex
from botocore.config import Config

from vaultfs import logsafe, testpoints
from vaultfs.config import S3Settings
from vaultfs.errors import CorruptionError, StoreSetupError
from vaultfs.fsutil import make_private_dirs, open_private
from vaultfs.store.base import (
    ObjectArchived,
    ObjectExists,
    ObjectInfo,
    ObjectNotFound,
    ProgressCallback,
    StoreError,
    StoreRefused,
)

log = logging.getLogger(__name__)

MiB = 1024**2
GiB = 1024**3
MIN_PART = 5 * MiB  # S3's smallest part (except the last)
MAX_PARTS = 10_000
MAX_SINGLE_PUT = 5 * GiB  # largest PutObject / CopyObject

_TRANSIENT_CODES = frozenset({
    "SlowDown", "Throttling", "ThrottlingException", "ThrottledException",
    "RequestThrottled", "RequestThrottledException", "TooManyRequestsException",
    "RequestLimitExceeded", "BandwidthLimitExceeded", "ProvisionedThroughputExceededException",
    "RequestTimeout", "RequestTimeoutException", "PriorRequestNotComplete",
    "InternalError", "ServiceUnavailable", "500", "502", "503", "504",
})
_CREDENTIAL_CODES = frozenset({
    "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken",
    "TokenRefreshRequired", "InvalidClientTokenId", "UnrecognizedClientException",
})
_TRANSIENT_EXCEPTIONS = (
    bex.ConnectionError,  # EndpointConnectionError, ConnectTimeoutError, proxy errors
    bex.HTTPClientError,  # ConnectionClosedError, ReadTimeoutError, ResponseStreamingError
    bex.IncompleteReadError,
    OSError,  # socket errors (reset, timeout) while sending or reading a body
)
_NO_CREDENTIALS = (
    "no S3 credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
    "or [s3].profile, or run where an instance role is available"
)


_PERMISSIONS = "s3:ListBucket, s3:GetObject, s3:PutObject, s3:DeleteObject and s3:RestoreObject"
# Where boto3 found the credentials (Credentials.method) -> (which ones, what to fix).
_CREDENTIAL_SOURCES = {
    "env": ("from the environment",
            "check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN if set), "
            "or unset them and set [s3].profile"),
    "shared-credentials-file": ("of profile {profile} in ~/.aws/credentials",
                                "fix that profile's keys, or choose another with [s3].profile"),
    "config-file": ("of profile {profile} in ~/.aws/config",
                    "fix that profile's keys, or choose another with [s3].profile"),
    "iam-role": ("of this machine's instance role", "check the role attached to the instance"),
    "container-role": ("of the container's role", "check the role of the task or pod"),
}


def credentials_refused(code: str, method: str | None, profile: str | None) -> str:
    """The one message for refused credentials (access check and any later request alike)."""
    which, fix = _CREDENTIAL_SOURCES.get(method or "", (
        f"from {method or 'an unknown source'} (profile {{profile}})",
        "refresh or fix them, or choose other ones with [s3].profile"))
    which = which.format(profile=profile or "default")
    return f"the S3 credentials were refused ({code}): they are the ones {which}: {fix}"


def access_denied(code: str, bucket: str) -> str:
    return (f"access to bucket {bucket} was denied ({code}): the credentials need "
            f"{_PERMISSIONS} on it")


def no_such_bucket(bucket: str, endpoint: str, *, bare_404: bool = False) -> str:
    """The one message for a missing bucket, or an endpoint answering 404 for it."""
    why = " (it answered HTTP 404 without an S3 error code)" if bare_404 else ""
    return (f"no such bucket {bucket} at {endpoint}{why}: check [s3].endpoint_url and the "
            "bucket name in [vault].store (vaultfs never creates buckets: create it first)")


def error_code(exc: bex.ClientError) -> str:
    """The S3 error code, or the HTTP status as a string for body-less answers (HEAD)."""
    err = exc.response.get("Error", {})
    code = str(err.get("Code") or "")
    if not code:
        code = str(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
    return code


def classify(
    exc: Exception, *, what: str, bucket: str, endpoint: str = "S3",
    credentials: tuple[str | None, str | None] = (None, None),
) -> StoreError:
    """Turn a botocore/boto3 failure of ``what`` (e.g. "GET s3://b/k") into a StoreError.

    Transient: throttling, 5xx, timeouts, broken connections. Problems of the
    configuration (credentials, permissions, the bucket) are `StoreRefused`
    with the same message `S3Store.check_access` gives; ``credentials`` is
    (Credentials.method, profile) for saying which credentials were refused.
    Everything else is permanent; the message names the request and says what
    to check. A bare 404 is ObjectNotFound here; `S3Store` tells a missing
    bucket from a missing key.
    """
    if isinstance(exc, bex.ClientError):
        code = error_code(exc)
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        text = exc.response.get("Error", {}).get("Message") or code
        if code == "NoSuchBucket":
            return StoreRefused(no_such_bucket(bucket, endpoint))
        if code in ("NoSuchKey", "NotFound", "404"):
            return ObjectNotFound(f"{what}: no such object")
        if code in ("PreconditionFailed", "412"):
            return ObjectExists(f"{what}: the object already exists")
        if code == "InvalidObjectState":
            return ObjectArchived(
                f"{what}: the object is archived: restore it first (vaultfs restore start)"
            )
        if code in _TRANSIENT_CODES or status >= 500:
            return StoreError(f"{what}: S3 answered {code}", transient=True)
        if code in _CREDENTIAL_CODES:
            log.debug("%s: %s", what, code)
            return StoreRefused(credentials_refused(code, *credentials))
        if code in ("AccessDenied", "403", "AllAccessDisabled"):
            log.debug("%s: %s", what, code)
            return StoreRefused(access_denied(code, bucket))
        return StoreError(f"{what}: S3 answered {code}: {text}")
    if isinstance(exc, (bex.NoCredentialsError, bex.PartialCredentialsError)):
        return StoreRefused(_NO_CREDENTIALS)
    if isinstance(exc, _TRANSIENT_EXCEPTIONS):
        return StoreError(f"{what}: {type(exc).__name__}: {exc}", transient=True)
    if isinstance(exc, bex.BotoCoreError):
        return StoreError(f"{what}: {exc}")
    raise TypeError(f"not an S3 failure: {exc!r}") from exc


def _b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode("ascii")


class S3Store:
    """Objects under ``s3://bucket/prefix/``; key ``a/b`` is S3 key ``prefix/a/b``.

    ``max_attempts`` is botocore's total tries per HTTP request (first included);
    the timeouts are per connection attempt and per socket read, in seconds.
    """

    #: Objects larger than this are copied with UploadPartCopy (a class knob for tests).
    copy_part_threshold: int = MAX_SINGLE_PUT

    def __init__(
        self,
        bucket: str,
        prefix: str,
        settings: S3Settings,
        *,
        max_attempts: int = 5,
        connect_timeout: float = 10.0,
        read_timeout: float = 60.0,
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.settings = settings
        self.url = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        try:
            self._session = boto3.Session(profile_name=settings.profile)
        except bex.ProfileNotFound:
            raise StoreSetupError(
                f"AWS profile {settings.profile!r} not found: check [s3].profile "
                "and ~/.aws/config / ~/.aws/credentials"
            ) from None
        _register_secrets(self._session)
        self._client = self._make_client(max_attempts, connect_timeout, read_timeout)
        self._bucket_seen = False  # the bucket answered a listing (see _check_bucket_exists)

    def _make_client(self, max_attempts: int, connect_timeout: float, read_timeout: float) -> Any:
        config = Config(
            # total_max_attempts counts the first try; the Config key "max_attempts" would not.
            retries={"mode": "standard", "total_max_attempts": max_attempts},
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            # We send SHA-256 checksums where they matter; botocore's default CRC32
            # trailers are refused by some S3-compatible servers.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        return self._session.client(
            "s3",
            endpoint_url=self.settings.endpoint_url,
            region_name=self.settings.region,
            config=config,
        )

    # -- helpers --------------------------------------------------------------

    def _key(self, key: str) -> str:
        if not key or key.startswith("/"):
            raise ValueError(f"invalid object key {key!r}")
        return f"{self.prefix}/{key}" if self.prefix else key

    def _what(self, op: str, key: str) -> str:
        return f"{op} s3://{self.bucket}/{self._key(key)}"

    def _error(self, exc: Exception, op: str, key: str) -> StoreError:
        return self._classify(exc, self._what(op, key))

    def _classify(self, exc: Exception, what: str) -> StoreError:
        """`classify` with this store's endpoint and credentials; a bare 404 is checked.

        A 404 without an S3 error code (every HEAD answer, or an endpoint that is
        not S3) may mean a missing key or a missing bucket: the first one is
        checked against the bucket, so "no such bucket" is never reported as a
        missing object.
        """
        creds = self._session.get_credentials()
        err = classify(exc, what=what, bucket=self.bucket, endpoint=self._client.meta.endpoint_url,
                       credentials=(creds.method if creds else None, self._session.profile_name))
        if (isinstance(err, ObjectNotFound) and isinstance(exc, bex.ClientError)
                and error_code(exc) in ("404", "NotFound")):
            self._check_bucket_exists()
        return err

    def _check_bucket_exists(self) -> None:
        """StoreRefused if the bucket is missing at the endpoint; asked once per store."""
        if self._bucket_seen:
            return
        try:
            self._client.list_objects_v2(Bucket=self.bucket, Prefix=self.prefix, MaxKeys=1)
        except bex.ClientError as e:
            code = error_code(e)
            if code in ("NoSuchBucket", "404", "NotFound"):
                endpoint = self._client.meta.endpoint_url
                raise StoreRefused(
                    no_such_bucket(self.bucket, endpoint, bare_404=code != "NoSuchBucket")
                ) from None
            return  # another failure: the missing key stays the answer
        except (bex.BotoCoreError, OSError):
            return
        self._bucket_seen = True

    # -- the protocol -----------------------------------------------------------

    def put(self, key: str, data: bytes, *, if_none_match: bool = False) -> None:
        """PutObject with a SHA-256 checksum; ``if_none_match`` sends ``If-None-Match: *``."""
        args: dict[str, Any] = {
            "Bucket": self.bucket,
            "Key": self._key(key),
            "Body": data,
            "ChecksumAlgorithm": "SHA256",  # some servers (moto) keep the sum only with this
            "ChecksumSHA256": _b64(hashlib.sha256(data).digest()),
        }
        if if_none_match:
            args["IfNoneMatch"] = "*"
        try:
            self._client.put_object(**args)
        except (bex.ClientError, bex.BotoCoreError, OSError) as e:
            raise self._error(e, "PUT", key) from e

    def put_file(
        self,
        key: str,
        path: Path,
        *,
        sha256: bytes,
        progress: ProgressCallback | None = None,
    ) -> None:
        """Upload ``path``: PutObject below ``multipart_threshold``, else multipart.

        The bytes read are hashed locally and must match ``sha256`` (else
        CorruptionError, nothing published); S3 checks what it receives against
        the SHA-256 we send (whole object, or per part). A failed multipart upload
        is aborted. After completion the object's size is checked with HEAD.
        """
        size = path.stat().st_size
        threshold = min(self.settings.multipart_threshold, MAX_SINGLE_PUT)
        if size < threshold or size == 0:  # a multipart upload needs a part
            self._put_small(key, path, sha256)
            expected = _b64(sha256)
            if progress is not None:
                progress(size)
        else:
            expected = self._put_multipart(key, path, size, sha256, progress)
        self._verify_stored(key, path, size, expected)

    def _verify_stored(self, key: str, path: Path, size: int, expected: str) -> None:
        """HEAD with checksums: the stored object must have our size and SHA-256 checksum.

        A multipart object's checksum is S3's composite one (the SHA-256 of the
        parts' SHA-256s, "-N" appended); servers that keep no checksum are
        checked by size alone (logged).
        """
        try:
            answer = self._client.head_object(
                Bucket=self.bucket, Key=self._key(key), ChecksumMode="ENABLED"
            )
        except (bex.ClientError, bex.BotoCoreError, OSError) as e:
            raise self._error(e, "HEAD", key) from e
        stored_size = int(answer["ContentLength"])
        if stored_size != size:
            raise CorruptionError(
                f"upload of {path} to {self.url}/{key}: stored size {stored_size} != {size}"
            )
        stored = answer.get("ChecksumSHA256")
        if stored is None:
            log.info("%s/%s: the server keeps no SHA-256 checksum; size verified", self.url, key)
            return
        if stored.split("-")[0] != expected.split("-")[0]:
            raise CorruptionError(
                f"upload of {path} to {self.url}/{key}: stored SHA-256 checksum {stored} "
                f"!= {expected}: the object is damaged; it will be uploaded again"
            )

    def _put_small(self, key: str, path: Path, sha256: bytes) -> None:
        data = path.read_bytes()
        digest = hashlib.sha256(data).digest()
        if digest != sha256:
            raise _changed(path, sha256, digest)
        try:
            self._client.put_object(
                Bucket=self.bucket, Key=self._key(key), Body=data,
                ChecksumAlgorithm="SHA256", ChecksumSHA256=_b64(digest),
            )
        except (bex.ClientError, bex.BotoCoreError, OSError) as e:
            raise self._upload_error(e, key, path) from e

    def _put_multipart(
        self, key: str, path: Path, size: int, sha256: bytes, progress: ProgressCallback | None
    ) -> str:
        """Upload in parts; return the composite checksum S3 should report."""
        part_size = max(self.settings.multipart_chunksize, MIN_PART, math.ceil(size / MAX_PARTS))
        s3key = self._key(key)
        try:
            upload_id = self._client.create_multipart_upload(
                Bucket=self.bucket, Key=s3key, ChecksumAlgorithm="SHA256"
            )["UploadId"]
        except (bex.ClientError, bex.BotoCoreError, OSError) as e:
            raise self._error(e, "CreateMultipartUpload", key) from e
        try:
            whole = hashlib.sha256()
            parts: list[dict[str, Any]] = []
            with open(path, "rb") as f:
                number = 0
                while chunk := f.read(part_size):
                    number += 1
                    whole.update(chunk)
                    part_sum = _b64(hashlib.sha256(chunk).digest())
                    answer = self._client.upload_part(
                        Bucket=self.bucket, Key=s3key, UploadId=upload_id, PartNumber=number,
                        Body=chunk, ChecksumAlgorithm="SHA256", ChecksumSHA256=part_sum,
                    )
                    parts.append(
                        {"PartNumber": number, "ETag": answer["ETag"], "ChecksumSHA256": part_sum}
                    )
                    testpoints.reach("multipart-part-uploaded")
                    if progress is not None:
                        progress(len(chunk))
            if whole.digest() != sha256:
                raise _changed(path, sha256, whole.digest())
            self._client.complete_multipart_upload(
                Bucket=self.bucket, Key=s3key, UploadId=upload_id,
                MultipartUpload={"Parts": parts},
            )
        except BaseException as e:
            self._abort(s3key, upload_id)
            if isinstance(e, (bex.ClientError, bex.BotoCoreError, OSError)):
                raise self._upload_error(e, key, path) from e
            raise
        composite = hashlib.sha256(b"".join(base64.b64decode(p["ChecksumSHA256"]) for p in parts))
        return f"{_b64(composite.digest())}-{len(parts)}"

    def _upload_error(self, exc: Exception, key: str, path: Path) -> Exception:
        if isinstance(exc, bex.ClientError) and error_code(exc) in ("BadDigest", "InvalidDigest"):
            return CorruptionError(
                f"upload of {path} to {self.url}/{key}: S3 received bytes that do not match "
                f"their SHA-256 ({error_code(exc)}): the file changed, or the network corrupts data"
            )
        if isinstance(exc, OSError) and not isinstance(exc, (ConnectionError, TimeoutError)):
            raise exc  # reading the local file failed: not a store problem
        return self._error(exc, "PUT", key)

    def _abort(self, s3key: str, upload_id: str) -> None:
        try:
            self._client.abort_multipart_upload(Bucket=self.bucket, Key=s3key, UploadId=upload_id)
        except (bex.ClientError, bex.BotoCoreError, OSError) as e:
            # Left for abort_incomplete_uploads (run at the start of every snapshot).
            log.info("could not abort multipart upload of %s: %s", s3key, e)

    def get(self, key: str) -> bytes:
        """Whole object. ObjectNotFound, ObjectArchived."""
        try:
            answer = self._client.get_object(Bucket=self.bucket, Key=self._key(key))
            return bytes(answer["Body"].read())
        except (bex.ClientError, bex.BotoCoreError, OSError) as e:
            raise self._error(e, "GET", key) from e

    def get_range(self, key: str, start: int, length: int) -> bytes:
        """``length`` bytes from ``start`` with a Range GET; ``b""`` at or past the end."""
        if start < 0 or length < 0:
            raise ValueError(f"bad range start={start} length={length}")
        if length == 0:
            self.head(key)
            return b""
        try:
            answer = self._client.get_object(
                Bucket=self.bucket, Key=self._key(key), Range=f"bytes={start}-{start + length - 1}"
            )
            return bytes(answer["Body"].read())
        except bex.ClientError as e:
            if error_code(e) == "InvalidRange":
                return b""
            raise self._error(e, "GET", key) from e
        except (bex.BotoCoreError, OSError) as e:
            raise self._error(e, "GET", key) from e

    def get_to_file(self, key: str, path: Path, progress: ProgressCallback | None = None) -> None:
        """Stream the object into a temp file beside ``path``, fsync, rename into place."""
        make_private_dirs(path.parent)
        tmp = path.parent / f".vaultfs-tmp-{secrets.token_hex(8)}"
        try:
            answer = self._client.get_object(Bucket=self.bucket, Key=self._key(key))
            with open_private(tmp) as f:
                for chunk in answer["Body"].iter_chunks(MiB):
                    f.write(chunk)
                    if progress is not None:
                        progress(len(chunk))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except (bex.ClientError, bex.BotoCoreError, ConnectionError, TimeoutError) as e:
            raise self._error(e, "GET", key) from e
        finally:
            tmp.unlink(missing_ok=True)

    def head(self, key: str) -> ObjectInfo:
        """HeadObject: size, storage class (absent means STANDARD), ``x-amz-restore``."""
        try:
            answer = self._client.head_object(Bucket=self.bucket, Key=self._key(key))
        except (bex.ClientError, bex.BotoCoreError, OSError) as e:
            raise self._error(e, "HEAD", key) from e
        return ObjectInfo(
            key=key,
            size=int(answer["ContentLength"]),
            storage_class=answer.get("StorageClass") or "STANDARD",
            restore=answer.get("Restore"),
        )

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        """ListObjectsV2, all pages, in key order. ``restore`` is always None here."""
        full = f"{self.prefix}/{prefix}" if self.prefix else prefix
        strip = len(self.prefix) + 1 if self.prefix else 0
        paginator = self._client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=full):
                for item in page.get("Contents", []):
                    yield ObjectInfo(
                        key=item["Key"][strip:],
                        size=int(item["Size"]),
                        storage_class=item.get("StorageClass") or "STANDARD",
                    )
        except (bex.ClientError, bex.BotoCoreError, OSError) as e:
            raise self._classify(e, f"LIST {self.url}/{prefix}") from e

    def delete(self, key: str) -> None:
        """DeleteObject; S3 itself answers success for absent keys."""
        try:
            self._client.delete_object(Bucket=self.bucket, Key=self._key(key))
        except bex.ClientError as e:
            if error_code(e) in ("NoSuchKey", "404"):
                return
            raise self._error(e, "DELETE", key) from e
        except (bex.BotoCoreError, OSError) as e:
            raise self._error(e, "DELETE", key) from e

    def abort_incomplete_uploads(self, prefix: str) -> int:
        """Abort every multipart upload whose key starts with ``prefix``; return how many."""
        full = f"{self.prefix}/{prefix}" if self.prefix else prefix
        count = 0
        paginator = self._client.get_paginator("list_multipart_uploads")
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=full):
                for upload in page.get("Uploads", []):
                    try:
                        self._client.abort_multipart_upload(
                            Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                        )
                        count += 1
                    except bex.ClientError as e:
                        if error_code(e) != "NoSuchUpload":
                            raise
        except (bex.ClientError, bex.BotoCoreError, OSError) as e:
            raise self._classify(e, f"ABORT UPLOADS {self.url}/{prefix}") from e
        return count

    def copy_to_class(self, key: str, storage_class: str) -> None:
        """Rewrite ``key`` onto itself in ``storage_class`` (metadata kept).

        CopyObject up to `copy_part_threshold`, multipart UploadPartCopy above it.
        Nothing to do if the object is already in that class.
        """
        info = self.head(key)
        if info.storage_class == storage_class:
            return
        s3key = self._key(key)
        source = {"Bucket": self.bucket, "Key": s3key}
        try:
            if info.size <= self.copy_part_threshold:
                self._client.copy_object(
                    Bucket=self.bucket, Key=s3key, CopySource=source,
                    StorageClass=storage_class, MetadataDirective="COPY",
                )
                return
        except (bex.ClientError, bex.BotoCoreError, OSError) as e:
            raise self._error(e, "COPY", key) from e
        self._copy_multipart(key, info.size, storage_class)

    def _copy_multipart(self, key: str, size: int, storage_class: str) -> None:
        s3key = self._key(key)
        try:
            head = self._client.head_object(Bucket=self.bucket, Key=s3key)
            upload_id = self._client.create_multipart_upload(
                Bucket=self.bucket, Key=s3key, StorageClass=storage_class,
                Metadata=head.get("Metadata", {}),
                **({"ContentType": head["ContentType"]} if head.get("ContentType") else {}),
            )["UploadId"]
        except (bex.ClientError, bex.BotoCoreError, OSError) as e:
            raise self._error(e, "COPY", key) from e
        part_size = max(self.settings.multipart_chunksize, MIN_PART, math.ceil(size / MAX_PARTS))
        try:
            parts = []
            for number, start in enumerate(range(0, size, part_size), start=1):
                end = min(start + part_size, size) - 1
                answer = self._client.upload_part_copy(
                    Bucket=self.bucket, Key=s3key, UploadId=upload_id, PartNumber=number,
                    CopySource={"Bucket": self.bucket, "Key": s3key},
                    CopySourceRange=f"bytes={start}-{end}",
                )
                parts.append({"PartNumber": number, "ETag": answer["CopyPartResult"]["ETag"]})
            self._client.complete_multipart_upload(
                Bucket=self.bucket, Key=s3key, UploadId=upload_id, MultipartUpload={"Parts": parts}
            )
        except BaseException as e:
            self._abort(s3key, upload_id)
            if isinstance(e, (bex.ClientError, bex.BotoCoreError, OSError)):
                raise self._error(e, "COPY", key) from e
            raise

    def restore(self, key: str, days: int, tier: str) -> None:
        """RestoreObject for ``days`` at ``tier`` (Bulk/Standard/Expedited).

        A restore already in progress (409 RestoreAlreadyInProgress) is success.
        """
        try:
            self._client.restore_object(
                Bucket=self.bucket, Key=self._key(key),
                RestoreRequest={"Days": days, "GlacierJobParameters": {"Tier": tier}},
            )
        except bex.ClientError as e:
            if error_code(e) == "RestoreAlreadyInProgress":
                return
            raise self._error(e, "RESTORE", key) from e
        except (bex.BotoCoreError, OSError) as e:
            raise self._error(e, "RESTORE", key) from e

    def check_access(self) -> None:
        """HeadBucket, then list one key, with short timeouts and few retries.

        StoreSetupError with advice for: unreachable endpoint, missing bucket,
        refused or missing credentials, access denied, wrong region.
        """
        client = self._make_client(max_attempts=2, connect_timeout=2.0, read_timeout=5.0)
        endpoint = client.meta.endpoint_url
        try:
            head_error: bex.ClientError | None = None
            try:
                client.head_bucket(Bucket=self.bucket)
            except bex.ClientError as e:
                # HEAD answers have no body, so a bare 403/404 says nothing about *why*:
                # the list below answers with an S3 error code.
                head_error = e
            client.list_objects_v2(Bucket=self.bucket, Prefix=self.prefix, MaxKeys=1)
            if head_error is not None:
                raise head_error
        except (bex.NoCredentialsError, bex.PartialCredentialsError):
            raise StoreSetupError(_NO_CREDENTIALS) from None
        except (bex.EndpointConnectionError, bex.ConnectTimeoutError, bex.ConnectionClosedError,
                bex.ReadTimeoutError):
            raise StoreSetupError(
                f"cannot reach the S3 endpoint {endpoint}: check [s3].endpoint_url and the network"
            ) from None
        except bex.ClientError as e:
            raise StoreSetupError(self._setup_message(e, endpoint)) from None
        except (bex.BotoCoreError, OSError) as e:
            raise StoreSetupError(
                f"cannot use the S3 endpoint {endpoint} ({type(e).__name__}: {e}): "
                "check [s3].endpoint_url and the network"
            ) from None

    def _setup_message(self, e: bex.ClientError, endpoint: str) -> str:
        code = error_code(e)
        if code in ("404", "NotFound", "NoSuchBucket"):
            return no_such_bucket(self.bucket, endpoint, bare_404=code != "NoSuchBucket")
        if code in _CREDENTIAL_CODES:
            creds = self._session.get_credentials()
            method = creds.method if creds is not None else None
            return credentials_refused(code, method, self._session.profile_name)
        if code in ("403", "AccessDenied", "AllAccessDisabled"):
            return access_denied(code, self.bucket)
        if code in ("301", "PermanentRedirect", "AuthorizationHeaderMalformed", "400"):
            region = e.response.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get(
                "x-amz-bucket-region"
            )
            if region:
                return f"bucket {self.bucket} is in region {region}: set [s3].region = \"{region}\""
        if code in _TRANSIENT_CODES:
            return f"the S3 endpoint {endpoint} answered {code}: try again later"
        text = e.response.get("Error", {}).get("Message") or ""
        return f"the S3 endpoint {endpoint} refused access to bucket {self.bucket} ({code} {text})"

    def __repr__(self) -> str:
        return f"S3Store({self.url!r})"


def _changed(path: Path, expected: bytes, got: bytes) -> CorruptionError:
    return CorruptionError(
        f"{path} no longer matches its SHA-256 (expected {expected.hex()}, read {got.hex()}): "
        "the file changed while it was backed up, or the disk is failing"
    )


def _register_secrets(session: Any) -> None:
    """Tell the log redactor the credentials boto3 found, so no line ever shows them."""
    try:
        creds = session.get_credentials()
        frozen = creds.get_frozen_credentials() if creds is not None else None
    except bex.BotoCoreError:
        return  # no usable credentials: the first request says so
    if frozen is not None:
        for value in (frozen.access_key, frozen.secret_key, frozen.token):
            logsafe.add_secret(value)
