"""A store in an S3 bucket (``s3://bucket/prefix``) — the only module that imports boto3.

`S3Store`: the boto3 session and client, and every request of the store
protocol. Talks to AWS or any S3-compatible endpoint (``[s3].endpoint_url``:
MinIO, Ceph, moto in the tests). Credentials come from boto3's normal chain
(env, ``[s3].profile``/shared files, instance roles) and are never logged.

Every botocore failure goes through `s3_errors.classify` and leaves as a
`StoreError` whose ``transient`` flag says whether retrying may help; botocore
retries individual requests (standard mode) and `retry.RetryingStore` retries
whole operations. Uploads carry SHA-256 checksums (`s3_upload`: whole object,
or one per part for multipart), so S3 itself refuses bytes that differ from
what was hashed locally.

Concurrency: one boto3 client per store, which botocore documents as safe to
share between threads.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import botocore.exceptions as bex
from botocore.config import Config

from vaultfs import logsafe
from vaultfs.config import S3Settings
from vaultfs.errors import StoreSetupError
from vaultfs.fsutil import make_private_dirs, open_private
from vaultfs.store import s3_upload
from vaultfs.store.base import (
    ObjectInfo,
    ObjectNotFound,
    ProgressCallback,
    StoreError,
    StoreRefused,
)
from vaultfs.store.limit import Bandwidth
from vaultfs.store.s3_errors import (
    CREDENTIAL_CODES,
    NO_CREDENTIALS,
    TRANSIENT_CODES,
    access_denied,
    classify,
    credentials_refused,
    error_code,
    no_such_bucket,
)
from vaultfs.store.s3_upload import MiB


class S3Store:
    """Objects under ``s3://bucket/prefix/``; key ``a/b`` is S3 key ``prefix/a/b``.

    ``max_attempts`` is botocore's total tries per HTTP request (first included);
    the timeouts are per connection attempt and per socket read, in seconds.
    """

    #: Objects larger than this are copied with UploadPartCopy (a class knob for tests).
    copy_part_threshold: int = s3_upload.MAX_SINGLE_PUT

    def __init__(
        self,
        bucket: str,
        prefix: str,
        settings: S3Settings,
        *,
        max_attempts: int = 5,
        connect_timeout: float = 10.0,
        read_timeout: float = 60.0,
        bandwidth: Bandwidth | None = None,
    ) -> None:
        self.bucket = bucket
        self.bandwidth = bandwidth or Bandwidth()
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

    def _target(self, key: str) -> s3_upload.Target:
        """``key`` as the object an upload or a multipart copy writes."""
        return s3_upload.Target(
            self._client,
            self.bucket,
            key,
            self._key(key),
            f"{self.url}/{key}",
            lambda exc, op: self._error(exc, op, key),
        )

    def _classify(self, exc: Exception, what: str) -> StoreError:
        """`classify` with this store's endpoint and credentials; a bare 404 is checked.

        A 404 without an S3 error code (every HEAD answer, or an endpoint that is
        not S3) may mean a missing key or a missing bucket: the first one is
        checked against the bucket, so "no such bucket" is never reported as a
        missing object.
        """
        creds = self._session.get_credentials()
        err = classify(
            exc,
            what=what,
            bucket=self.bucket,
            endpoint=self._client.meta.endpoint_url,
            credentials=(creds.method if creds else None, self._session.profile_name),
        )
        if (
            isinstance(err, ObjectNotFound)
            and isinstance(exc, bex.ClientError)
            and error_code(exc) in ("404", "NotFound")
        ):
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
            "Body": self.bandwidth.up.body(data),
            "ChecksumAlgorithm": "SHA256",  # some servers (moto) keep the sum only with this
            "ChecksumSHA256": s3_upload.b64(hashlib.sha256(data).digest()),
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
        storage_class: str = "STANDARD",
    ) -> None:
        """Upload ``path``: PutObject below ``multipart_threshold``, else multipart.

        The bytes read are hashed locally and must match ``sha256`` (else
        CorruptionError, nothing published); S3 checks what it receives against
        the SHA-256 we send (whole object, or per part). A failed multipart upload
        is aborted. After completion the object's size, checksum and storage class
        are checked with HEAD (`s3_upload`).
        """
        s3_upload.put_file(
            self._target(key), path, self.settings, sha256, progress, storage_class, self.bandwidth.up
        )

    def get(self, key: str) -> bytes:
        """Whole object. ObjectNotFound, ObjectArchived."""
        try:
            answer = self._client.get_object(Bucket=self.bucket, Key=self._key(key))
            return self._receive(answer["Body"])
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
            return self._receive(answer["Body"])
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
                    self.bandwidth.down.take(len(chunk))
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

    def _receive(self, body: Any) -> bytes:
        """A response body read whole, in pieces charged to the download limit (a piece
        not yet read is held back by TCP's flow control)."""
        if not self.bandwidth.down.schedule.entries:
            return bytes(body.read())
        pieces = []
        for chunk in body.iter_chunks(256 * 1024):
            self.bandwidth.down.take(len(chunk))
            pieces.append(chunk)
        return b"".join(pieces)

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
                    Bucket=self.bucket,
                    Key=s3key,
                    CopySource=source,
                    StorageClass=storage_class,
                    MetadataDirective="COPY",
                )
                return
        except (bex.ClientError, bex.BotoCoreError, OSError) as e:
            raise self._error(e, "COPY", key) from e
        s3_upload.copy_multipart(self._target(key), info.size, storage_class, self.settings)

    def restore(self, key: str, days: int, tier: str) -> None:
        """RestoreObject for ``days`` at ``tier`` (Bulk/Standard/Expedited).

        A restore already in progress (409 RestoreAlreadyInProgress) is success.
        """
        try:
            self._client.restore_object(
                Bucket=self.bucket,
                Key=self._key(key),
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
            raise StoreSetupError(NO_CREDENTIALS) from None
        except (
            bex.EndpointConnectionError,
            bex.ConnectTimeoutError,
            bex.ConnectionClosedError,
            bex.ReadTimeoutError,
        ):
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
        if code in CREDENTIAL_CODES:
            creds = self._session.get_credentials()
            method = creds.method if creds is not None else None
            return credentials_refused(code, method, self._session.profile_name)
        if code in ("403", "AccessDenied", "AllAccessDisabled"):
            return access_denied(code, self.bucket)
        if code in ("301", "PermanentRedirect", "AuthorizationHeaderMalformed", "400"):
            region = e.response.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("x-amz-bucket-region")
            if region:
                return f'bucket {self.bucket} is in region {region}: set [s3].region = "{region}"'
        if code in TRANSIENT_CODES:
            return f"the S3 endpoint {endpoint} answered {code}: try again later"
        text = e.response.get("Error", {}).get("Message") or ""
        return f"the S3 endpoint {endpoint} refused access to bucket {self.bucket} ({code} {text})"

    def __repr__(self) -> str:
        return f"S3Store({self.url!r})"


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
