"""The store in an S3-compatible bucket, through boto3: AWS S3, MinIO, Ceph RGW, GCS's XML API.

Settings (``store:`` in the hub's file, ``HYBRID_HUB_STORE__*`` in the environment): ``bucket``,
``prefix`` (the hub's keys go under it), ``endpoint_url`` (empty for AWS), ``region``,
``addressing_style`` (``path`` for MinIO and most self-hosted stores) and, optionally,
``access_key_id``/``secret_access_key``; without them boto3's usual chain applies
(``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/``AWS_SESSION_TOKEN``, ``AWS_PROFILE``, an
instance or pod role). The bucket must exist.

A PUT is atomic in S3 (an object appears whole or not at all), and so is a multipart upload at
its completion. ``put_if_absent`` is a PUT with ``If-None-Match: *``, which AWS S3 (since
August 2024), MinIO, Ceph RGW (Squid) and GCS honour: the second writer gets 412 Precondition
Failed (or 409 while the first write is in flight). A store that ignores the header would let
two writers both win: it must not be used for more than one replica.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import StoreError, StoreObjectMissingError
from .base import CHUNK_BYTES, ObjectInfo, ObjectStore, check_key

if TYPE_CHECKING:
    from ..settings import StoreSettings

__all__ = ["S3Store"]

logger = logging.getLogger(__name__)

_MISSING = {"404", "NoSuchKey", "NotFound"}
_PRECONDITION = {"412", "PreconditionFailed", "409", "ConditionalRequestConflict"}


class S3Store(ObjectStore):
    def __init__(self, settings: StoreSettings) -> None:
        import boto3
        from botocore.config import Config

        if not settings.bucket:
            raise StoreError("store.kind is s3 but store.bucket is not set")
        self.bucket = settings.bucket
        self.prefix = settings.prefix.strip("/") + "/" if settings.prefix.strip("/") else ""
        where = settings.endpoint_url or "AWS S3"
        self.description = f"s3://{self.bucket}/{self.prefix} at {where}"
        credentials: dict[str, Any] = {}
        if settings.access_key_id is not None and settings.secret_access_key is not None:
            credentials = {
                "aws_access_key_id": settings.access_key_id.get_secret_value(),
                "aws_secret_access_key": settings.secret_access_key.get_secret_value(),
            }
        self._client = boto3.session.Session().client(
            "s3",
            endpoint_url=settings.endpoint_url or None,
            region_name=settings.region or None,
            config=Config(
                s3={"addressing_style": settings.addressing_style},
                retries={"max_attempts": 5, "mode": "standard"},
                connect_timeout=settings.timeout_s,
                read_timeout=settings.timeout_s,
                max_pool_connections=32,
            ),
            **credentials,
        )

    def _key(self, key: str) -> str:
        try:
            return self.prefix + check_key(key)
        except ValueError as exc:
            raise StoreObjectMissingError(str(exc)) from None

    def _error(self, exc: Exception, what: str) -> StoreError:
        return StoreError(f"the store {self.description} failed to {what}: {exc}")

    def _call(self, what: str, operation: str, **kwargs: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return getattr(self._client, operation)(Bucket=self.bucket, **kwargs)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            status = str(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
            if code in _MISSING or status == "404":
                raise StoreObjectMissingError(f"no object {kwargs.get('Key', '')}") from None
            if code in _PRECONDITION or status in ("412", "409"):
                raise _PreconditionFailedError from None
            raise self._error(exc, what) from exc
        except BotoCoreError as exc:
            raise self._error(exc, what) from exc

    def stat(self, key: str) -> ObjectInfo | None:
        try:
            head = self._call("read", "head_object", Key=self._key(key))
        except StoreObjectMissingError:
            return None
        return ObjectInfo(
            key=key,
            size_bytes=int(head["ContentLength"]),
            modified_s=head["LastModified"].timestamp(),
        )

    def get(self, key: str) -> bytes:
        reply = self._call("read", "get_object", Key=self._key(key))
        with reply["Body"] as body:
            return bytes(body.read())

    def read(self, key: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        extra: dict[str, Any] = {}
        if start or end is not None:
            extra["Range"] = f"bytes={start}-{'' if end is None else end - 1}"
        if end is not None and end <= start:
            return iter(())
        reply = self._call("read", "get_object", Key=self._key(key), **extra)
        return _stream(reply["Body"])

    def download(self, key: str, path: Path) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self._client.download_file(self.bucket, self._key(key), str(path))
        except ClientError as exc:
            if str(exc.response.get("Error", {}).get("Code", "")) in _MISSING:
                raise StoreObjectMissingError(f"no object {key}") from None
            raise self._error(exc, "read") from exc
        except BotoCoreError as exc:
            raise self._error(exc, "read") from exc

    def put(self, key: str, data: bytes) -> None:
        self._call("write", "put_object", Key=self._key(key), Body=data)

    def put_file(self, key: str, path: Path) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self._client.upload_file(str(path), self.bucket, self._key(key))
        except (BotoCoreError, ClientError) as exc:
            raise self._error(exc, "write") from exc

    def put_if_absent(self, key: str, data: bytes) -> bool:
        try:
            self._call("write", "put_object", Key=self._key(key), Body=data, IfNoneMatch="*")
        except _PreconditionFailedError:
            return False
        return True

    def copy(self, source: str, target: str) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self._client.copy(
                {"Bucket": self.bucket, "Key": self._key(source)}, self.bucket, self._key(target)
            )
        except ClientError as exc:
            if str(exc.response.get("Error", {}).get("Code", "")) in _MISSING:
                raise StoreObjectMissingError(f"no object {source}") from None
            raise self._error(exc, "copy") from exc
        except BotoCoreError as exc:
            raise self._error(exc, "copy") from exc

    def _pages(self, prefix: str, **extra: Any) -> Iterator[dict[str, Any]]:
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"Prefix": self.prefix + prefix, **extra}
            if token:
                kwargs["ContinuationToken"] = token
            page = self._call("list", "list_objects_v2", **kwargs)
            yield page
            if not page.get("IsTruncated"):
                return
            token = page.get("NextContinuationToken")

    def list_objects(self, prefix: str) -> list[ObjectInfo]:
        cut = len(self.prefix)
        return [
            ObjectInfo(
                key=item["Key"][cut:],
                size_bytes=int(item["Size"]),
                modified_s=item["LastModified"].timestamp(),
            )
            for page in self._pages(prefix)
            for item in page.get("Contents", [])
        ]

    def children(self, prefix: str) -> list[str]:
        start = len(self.prefix) + len(prefix)
        names = {
            common["Prefix"][start:].rstrip("/")
            for page in self._pages(prefix, Delimiter="/")
            for common in page.get("CommonPrefixes", [])
        }
        return sorted(n for n in names if n)

    def delete(self, key: str) -> None:
        with contextlib.suppress(StoreObjectMissingError):
            self._call("write", "delete_object", Key=self._key(key))

    def delete_prefix(self, prefix: str) -> None:
        keys = [self.prefix + info.key for info in self.list_objects(prefix)]
        for start in range(0, len(keys), 1000):
            batch = [{"Key": k} for k in keys[start : start + 1000]]
            self._call("write", "delete_objects", Delete={"Objects": batch, "Quiet": True})

    def close(self) -> None:
        self._client.close()


class _PreconditionFailedError(Exception):
    pass


def _stream(body: Any) -> Iterator[bytes]:
    try:
        yield from body.iter_chunks(CHUNK_BYTES)
    finally:
        body.close()
