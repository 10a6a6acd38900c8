"""The shared store: where every hub replica keeps artifacts, uploads, releases and conversion jobs.

A small object-store interface (:class:`ObjectStore`) with two implementations, chosen by
``settings.store.kind``:

    filesystem.py   a folder (local disk for one hub, a shared volume such as NFS or CephFS
                    for several): writes go to a temporary file renamed into place;
                    ``put_if_absent`` links the file into place, which fails if it exists
    s3.py           S3-compatible object storage through boto3 (AWS S3, MinIO, Ceph RGW, GCS's
                    XML API): single PUTs are atomic; ``put_if_absent`` is a conditional PUT
                    (``If-None-Match: *``)

Keys are ``/``-separated relative paths; each part is one name (never empty, ``.`` or ``..``).
Nothing a reader sees is ever half written: every write is whole or absent. The only
operation two writers may race on is ``put_if_absent``, and exactly one of them wins; every
other write is either content addressed (the same key always holds the same bytes) or
claimed first with ``put_if_absent`` by the one writer allowed to make it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import StoreError, StoreObjectMissingError
from .base import CHUNK_BYTES, ObjectInfo, ObjectStore, check_key

if TYPE_CHECKING:
    from ..settings import HubSettings

__all__ = [
    "CHUNK_BYTES",
    "ObjectInfo",
    "ObjectStore",
    "StoreError",
    "StoreObjectMissingError",
    "check_key",
    "open_store",
]


def open_store(settings: HubSettings) -> ObjectStore:
    """The store the settings name: a folder (the default) or an S3 bucket."""
    store = settings.store
    if store.kind == "s3":
        from .s3 import S3Store

        return S3Store(store)
    from .filesystem import FilesystemStore

    root = store.path or settings.artifact_store or settings.model_repository / ".artifacts"
    return FilesystemStore(root)
