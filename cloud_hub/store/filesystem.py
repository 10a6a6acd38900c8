"""The store as a folder: local disk for one hub, a shared volume (NFS, CephFS, a cloud file
share) for several.

Writes go to a temporary file beside the target (``.~<name>.<random>``, never listed), flushed
and fsynced, then renamed over the target (``os.replace``: readers see the old or the new file,
never part of one). ``put_if_absent`` links the temporary file to the target instead
(``os.link``), which fails when the target exists, atomically on local file systems and on
NFS (the server decides). Keys are checked part by part and every path is resolved inside the
root, so no key leads out of it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat as stat_mode
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from ..errors import StoreError, StoreObjectMissingError
from .base import CHUNK_BYTES, ObjectInfo, ObjectStore, check_key

__all__ = ["FilesystemStore"]

_TEMPORARY = ".~"


class FilesystemStore(ObjectStore):
    def __init__(self, root: Path) -> None:
        self.root = root
        self.description = str(root)

    def _path(self, key: str) -> Path:
        try:
            check_key(key)
        except ValueError as exc:
            raise StoreObjectMissingError(str(exc)) from None
        return self.root.joinpath(*key.split("/"))

    def _prefix_path(self, prefix: str) -> tuple[Path, str]:
        """The folder holding ``prefix`` and the start of names within it."""
        folder, _, start = prefix.rpartition("/")
        return (self._path(folder) if folder else self.root), start

    def stat(self, key: str) -> ObjectInfo | None:
        try:
            st = self._path(key).stat()
        except (FileNotFoundError, NotADirectoryError, StoreObjectMissingError):
            return None
        except OSError as exc:
            raise StoreError(f"the store {self.root} cannot be read: {exc}") from exc
        if not stat_mode.S_ISREG(st.st_mode):
            return None
        return ObjectInfo(key=key, size_bytes=st.st_size, modified_s=st.st_mtime)

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise StoreObjectMissingError(f"no object {key}") from None
        except OSError as exc:
            raise StoreError(f"the store {self.root} cannot be read: {exc}") from exc

    def read(self, key: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        try:
            handle = self._path(key).open("rb")
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise StoreObjectMissingError(f"no object {key}") from None
        except OSError as exc:
            raise StoreError(f"the store {self.root} cannot be read: {exc}") from exc
        return _chunks(handle, start, end)

    def download(self, key: str, path: Path) -> None:
        try:
            shutil.copyfile(self._path(key), path)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise StoreObjectMissingError(f"no object {key}") from None

    def _temporary(self, target: Path) -> Path:
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"the store {self.root} is not writable: {exc}") from exc
        return target.with_name(f"{_TEMPORARY}{target.name}.{uuid.uuid4().hex}")

    def _write_temporary(self, target: Path, data: bytes | Path) -> Path:
        tmp = self._temporary(target)
        try:
            if isinstance(data, Path):
                shutil.copyfile(data, tmp)
                with tmp.open("rb+") as handle:
                    os.fsync(handle.fileno())
            else:
                with tmp.open("wb") as handle:
                    handle.write(data)
                    handle.flush()
                    os.fsync(handle.fileno())
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise StoreError(f"the store {self.root} is not writable: {exc}") from exc
        return tmp

    def put(self, key: str, data: bytes) -> None:
        self._put(key, data)

    def put_file(self, key: str, path: Path) -> None:
        self._put(key, path)

    def _put(self, key: str, source: bytes | Path) -> None:
        """Write to a temporary file beside the target, then rename it into place."""
        target = self._path(key)
        tmp = self._write_temporary(target, source)
        try:
            os.replace(tmp, target)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise StoreError(f"the store {self.root} is not writable: {exc}") from exc

    def put_if_absent(self, key: str, data: bytes) -> bool:
        target = self._path(key)
        tmp = self._write_temporary(target, data)
        try:
            os.link(tmp, target)
        except FileExistsError:
            return False
        except OSError as exc:
            raise StoreError(f"the store {self.root} is not writable: {exc}") from exc
        finally:
            tmp.unlink(missing_ok=True)
        return True

    def copy(self, source: str, target: str) -> None:
        path = self._path(source)
        if not path.is_file():
            raise StoreObjectMissingError(f"no object {source}")
        self.put_file(target, path)

    def list_objects(self, prefix: str) -> list[ObjectInfo]:
        folder, start = self._prefix_path(prefix)
        if not folder.is_dir():
            return []
        found: list[ObjectInfo] = []
        base = self.root
        for dirpath, dirnames, filenames in os.walk(folder):
            here = Path(dirpath)
            dirnames.sort()
            if here == folder:
                dirnames[:] = [d for d in dirnames if d.startswith(start)]
            for name in sorted(filenames):
                if name.startswith(_TEMPORARY) or (here == folder and not name.startswith(start)):
                    continue
                path = here / name
                with contextlib.suppress(FileNotFoundError):
                    st = path.stat()
                    key = path.relative_to(base).as_posix()
                    found.append(ObjectInfo(key=key, size_bytes=st.st_size, modified_s=st.st_mtime))
        return found

    def children(self, prefix: str) -> list[str]:
        folder = self._path(prefix.rstrip("/")) if prefix else self.root
        try:
            return sorted(p.name for p in folder.iterdir() if p.is_dir())
        except (FileNotFoundError, NotADirectoryError):
            return []
        except OSError as exc:
            raise StoreError(f"the store {self.root} cannot be read: {exc}") from exc

    def delete(self, key: str) -> None:
        path = self._path(key)
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            path.unlink()
        self._prune(path.parent)

    def delete_prefix(self, prefix: str) -> None:
        if prefix.endswith("/"):
            folder = self._path(prefix.rstrip("/"))
            shutil.rmtree(folder, ignore_errors=True)
            self._prune(folder.parent)
        else:
            super().delete_prefix(prefix)

    def _prune(self, folder: Path) -> None:
        """Remove folders left empty, up to the root (an object store has no folders)."""
        root = self.root
        while folder != root and folder.is_relative_to(root):
            try:
                folder.rmdir()
            except OSError:
                return
            folder = folder.parent


def _chunks(handle: BinaryIO, start: int, end: int | None) -> Iterator[bytes]:
    try:
        handle.seek(start)
        left = None if end is None else max(0, end - start)
        while left is None or left > 0:
            chunk = handle.read(CHUNK_BYTES if left is None else min(CHUNK_BYTES, left))
            if not chunk:
                return
            if left is not None:
                left -= len(chunk)
            yield chunk
    finally:
        handle.close()
