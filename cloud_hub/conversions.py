"""Conversion jobs on the hub: ``model-convert`` as a service (``admin`` scope), shared by replicas.

``POST /v1/conversions?filename=digits.keras&profile=rpi4-litert-fp16&profile=cloud-cpu-onnx``
with the source model as the raw request body (``application/octet-stream``; an archive may also
carry ``calibration.npz`` and ``samples.npz``, see :mod:`converters.jobs`) answers 202 with the
job. Optional query parameters: ``name`` (the artifacts' name, by default the file's stem),
``publish_to_repository=true`` with ``model_name`` (and ``publish_profile`` when several
profiles are built) to add the artifact to the model repository as a new version.

A job lives in the shared store (:mod:`cloud_hub.job_records`): its record, source, lease,
progress, logs and result, so ``GET /v1/conversions/{id}`` (state ``queued``, ``running``,
``succeeded`` or ``failed``, progress, artifacts with their download paths, the error with its
validation report) and ``GET /v1/conversions/{id}/log`` answer from any replica. The
artifacts' version is reserved in the store when the job is accepted.

Every replica looks for jobs to run every ``conversions.poll_s`` (and at once when it accepts
one): a job nobody holds, or whose lease expired because its replica died, is taken with a new
lease and run from its source. Jobs run ``conversions.workers`` at a time in a worker process
started with ``spawn``, never in the hub's event loop or its threads, so TensorFlow never loads
into the hub itself. The attempt's artifacts go to the store under the job, then the attempt
writes ``result.json`` with ``put_if_absent``: the first attempt to do so is the one that
counts, even if a replica thought dead finishes as well, and its artifacts are copied into
place (by it, or by whichever replica takes the lease next if it dies doing so). At most
``conversions.max_pending`` jobs wait or run in the whole store; beyond that the answer is 503.
A replica stopping (SIGTERM) gives its running jobs back at once for another to take.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import enum
import functools
import json
import logging
import multiprocessing
import os
import shutil
import socket
import tempfile
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.responses import JSONResponse, PlainTextResponse

from protocols import MANIFEST_FILENAME, MODEL_NAME

from .access import Access
from .artifacts import RESERVED, ArtifactStore, scope_check
from .backends.base import load_backend_class
from .errors import (
    BadRequestError,
    ConfigError,
    ConflictError,
    HubError,
    JobNotFoundError,
    PayloadTooLargeError,
    QueueFullError,
    UnsupportedMediaTypeError,
)
from .job_records import JobRecords, Lease
from .model_config import load_model_config
from .repository import ModelRepository
from .settings import HubSettings

__all__ = ["ConversionService", "JobState", "router"]

logger = logging.getLogger(__name__)

UPLOAD_SUFFIXES = (".keras", ".h5", ".onnx", ".zip", ".tar", ".tar.gz", ".tgz")
BACKEND_OF_FORMAT = {"tflite": "tflite", "onnx": "onnxruntime", "tensorrt": "tensorrt"}
WRITE_CHUNK_BYTES = 1 << 20
MAX_ATTEMPTS = 4
"""A job whose attempts keep dying (each replica that takes it crashes) fails after these."""


class JobState(str, enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


@dataclass(frozen=True, kw_only=True)
class Publish:
    model_name: str
    profile: str


class _LeaseLostError(Exception):
    pass


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat().replace("+00:00", "Z")


def replica_id() -> str:
    """This process among the replicas: host, pid and a random part (pids repeat in pods)."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class ConversionService:
    """Accepts jobs into the store, runs those this replica takes, reports any job."""

    def __init__(
        self, settings: HubSettings, repository: ModelRepository, store: ArtifactStore
    ) -> None:
        self._settings = settings
        self._conf = settings.conversions
        self._repository = repository
        self.store = store
        self.records = JobRecords(store.objects)
        self.replica = replica_id()
        self._running: dict[str, asyncio.Task[None]] = {}
        self._leases: dict[str, Lease] = {}
        self._pool: ProcessPoolExecutor | None = None
        self._publish_lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._closing = False

    # -- requests --------------------------------------------------------------------------------

    async def get(self, job_id: str) -> dict[str, Any]:
        if not MODEL_NAME.match(job_id):
            raise JobNotFoundError(f"no conversion job {job_id!r}")
        view = await asyncio.to_thread(self._view, job_id)
        if view is None:
            raise JobNotFoundError(f"no conversion job {job_id!r}")
        return view

    async def jobs(self) -> list[dict[str, Any]]:
        def views() -> list[dict[str, Any]]:
            found = [v for i in self.records.all_ids() if (v := self._view(i)) is not None]
            return sorted(found, key=lambda v: str(v["created_at"]))

        return await asyncio.to_thread(views)

    async def log(self, job_id: str) -> str:
        await self.get(job_id)

        def read() -> str:
            logs = sorted(
                self.records.objects.list_objects(self.records.key(job_id, "logs") + "/"),
                key=lambda i: int(i.key.rsplit("/", 1)[-1].split(".")[0]),
            )
            parts = []
            for info in logs:
                attempt = info.key.rsplit("/", 1)[-1].split(".")[0]
                text = self.records.objects.get(info.key).decode("utf-8", "replace")
                parts.append(f"--- attempt {attempt}\n{text}")
            return "".join(parts)

        return await asyncio.to_thread(read)

    def _view(self, job_id: str) -> dict[str, Any] | None:
        record = self.records.read(job_id, "job.json")
        if record is None:
            return None
        done = self.records.read(job_id, "done.json")
        result = self.records.read(job_id, "result.json")
        progress = self.records.read(job_id, "progress.json") or {}
        lease = self.records.lease(job_id) if done is None else None
        if done is not None:
            state = done["state"]
        elif result is not None or lease is not None or progress:
            state = JobState.RUNNING.value
        else:
            state = JobState.QUEUED.value
        step, fraction = str(progress.get("step", "queued")), float(progress.get("fraction", 0.0))
        if state == JobState.SUCCEEDED.value:
            step, fraction = "done", 1.0
        elif done is None and result is not None:
            step = "committing"
        final = done or {}
        publish = record.get("publish")
        return {
            "id": job_id,
            "state": state,
            "progress": {"fraction": fraction, "step": step},
            "name": record["name"],
            "version": str(record["version"]),
            "profiles": record["profiles"],
            "source": {"filename": record["filename"], "size_bytes": record["size_bytes"]},
            "created_at": record["created_at"],
            "started_at": progress.get("started_at"),
            "finished_at": final.get("finished_at"),
            "artifacts": final.get("artifacts", []),
            "warnings": final.get("warnings", []),
            "publish": None if publish is None else {**publish, **(final.get("published") or {})},
            "error": final.get("error"),
            "worker": {
                "replica": final.get("replica")
                or (lease.owner if lease else progress.get("replica")),
                "attempt": final.get("attempt") or (lease.attempt if lease else None),
            },
        }

    def _check_request(
        self,
        filename: str,
        profiles: list[str],
        name: str | None,
        publish_to_repository: bool,
        model_name: str | None,
        publish_profile: str | None,
    ) -> tuple[str, tuple[str, ...], Publish | None]:
        from converters.errors import ConversionError
        from converters.profiles import load_profiles

        if not MODEL_NAME.match(filename) or not filename.lower().endswith(UPLOAD_SUFFIXES):
            raise BadRequestError(
                f"filename {filename!r}: a plain file name ending in one of "
                f"{', '.join(UPLOAD_SUFFIXES)}"
            )
        wanted = tuple(p.strip() for entry in profiles for p in entry.split(",") if p.strip())
        if any("/" in p or p.endswith((".yaml", ".yml")) for p in wanted):
            raise BadRequestError("profiles are named here, not given as files")
        try:
            loaded = load_profiles(wanted)
        except ConversionError as exc:
            raise BadRequestError(exc.message) from None
        stem = filename
        for suffix in UPLOAD_SUFFIXES:
            if stem.lower().endswith(suffix):
                stem = stem[: -len(suffix)]
                break
        name = name or stem
        if not MODEL_NAME.match(name):
            raise BadRequestError(f"name {name!r}: use letters, digits, '_', '.', '-'")
        if not publish_to_repository:
            return name, wanted, None
        model = model_name or name
        if not MODEL_NAME.match(model):
            raise BadRequestError(f"model_name {model!r}: use letters, digits, '_', '.', '-'")
        chosen = publish_profile or (wanted[0] if len(wanted) == 1 else None)
        if chosen is None or chosen not in wanted:
            raise BadRequestError(
                "name the profile to publish with publish_profile (one of the profiles built)"
            )
        backend = BACKEND_OF_FORMAT[next(p for p in loaded if p.name == chosen).format]
        config = self._repository.root / model / "config.yaml"
        if config.is_file():
            try:
                existing = load_model_config(config).backend
            except ConfigError as exc:
                raise ConflictError(exc.message) from None
            if existing != backend:
                raise ConflictError(
                    f"model {model!r} in the repository is served by {existing}; profile "
                    f"{chosen!r} makes a {backend} artifact"
                )
        return name, wanted, Publish(model_name=model, profile=chosen)

    async def submit(
        self,
        request: Request,
        *,
        filename: str,
        profiles: list[str],
        name: str | None,
        publish_to_repository: bool,
        model_name: str | None,
        publish_profile: str | None,
    ) -> dict[str, Any]:
        content_type = request.headers.get("content-type", "")
        if content_type.startswith("multipart/"):
            raise UnsupportedMediaTypeError(
                "send the model as the raw request body (application/octet-stream) with "
                "?filename=...; multipart forms are not taken"
            )
        name, wanted, publish = self._check_request(
            filename, profiles, name, publish_to_repository, model_name, publish_profile
        )
        if len(await asyncio.to_thread(self.records.queued)) >= self._conf.max_pending:
            raise QueueFullError(
                f"{self._conf.max_pending} conversions are queued or running; try again later"
            )
        job_id = uuid.uuid4().hex
        scratch = Path(tempfile.mkdtemp(prefix=f"upload-{job_id}-", dir=self._work_root()))
        try:
            size = await self._receive(request, scratch / filename)
            if size == 0:
                raise BadRequestError("the request body is empty; send the model file as the body")
            await asyncio.to_thread(
                self.records.objects.put_file,
                self.records.key(job_id, "source", filename),
                scratch / filename,
            )
        finally:
            await asyncio.to_thread(shutil.rmtree, scratch, True)
        version = await asyncio.to_thread(self.store.reserve_version, name, job_id)
        record = {
            "id": job_id,
            "name": name,
            "version": version,
            "profiles": list(wanted),
            "filename": filename,
            "size_bytes": size,
            "publish": None
            if publish is None
            else {"model_name": publish.model_name, "profile": publish.profile},
            "created_at": _now(),
            "accepted_by": self.replica,
        }
        await asyncio.to_thread(self.records.create, job_id, record)
        self._wake.set()
        logger.info(
            "conversion %s queued: %s (%d bytes) for %s", job_id, filename, size, ", ".join(wanted)
        )
        view = await asyncio.to_thread(self._view, job_id)
        assert view is not None
        return view

    def _work_root(self) -> Path | None:
        root = self._conf.work_dir
        if root is not None:
            root.mkdir(parents=True, exist_ok=True)
        return root

    async def _receive(self, request: Request, path: Path) -> int:
        limit = self._settings.limits.payload_max_bytes
        received = 0
        buffer = bytearray()
        with path.open("wb") as handle:
            async for chunk in request.stream():
                received += len(chunk)
                if received > limit:
                    raise PayloadTooLargeError(f"the upload is over the limit of {limit} bytes")
                buffer += chunk
                if len(buffer) >= WRITE_CHUNK_BYTES:
                    await asyncio.to_thread(handle.write, bytes(buffer))
                    buffer.clear()
            if buffer:
                await asyncio.to_thread(handle.write, bytes(buffer))
        return received

    # -- taking jobs -----------------------------------------------------------------------------

    async def poll(self) -> None:
        """Look for jobs until closed: at every ``poll_s``, and at once after a submission."""
        while not self._closing:
            try:
                await self._take_free_jobs()
            except HubError as exc:
                logger.warning("conversion jobs not polled: %s", exc.message)
            except Exception:
                logger.exception("conversion jobs not polled")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self._conf.poll_s)
            self._wake.clear()

    async def _take_free_jobs(self) -> None:
        if self._conf.workers == 0:
            return
        for job_id in await asyncio.to_thread(self.records.queued):
            if self._closing or len(self._running) >= self._conf.workers:
                return
            if job_id in self._running:
                continue
            lease = await asyncio.to_thread(
                self.records.take, job_id, self.replica, self._conf.lease_s
            )
            if lease is None:
                continue
            if lease.attempt > 1:
                logger.info("conversion %s: taken over (attempt %d)", job_id, lease.attempt)
            self._leases[job_id] = lease
            task = asyncio.create_task(self._work(job_id), name=f"conversion-{job_id}")
            self._running[job_id] = task
            task.add_done_callback(functools.partial(self._finished_locally, job_id))

    def _finished_locally(self, job_id: str, _task: object = None) -> None:
        self._running.pop(job_id, None)
        self._leases.pop(job_id, None)
        self._wake.set()

    async def _heartbeat(self, job_id: str, progress_file: Path, log_file: Path) -> None:
        """Renew the lease every third of ``lease_s``; copy progress and log into the store."""
        started = _now()
        while True:
            await asyncio.sleep(self._conf.lease_s / 3)
            lease = self._leases.get(job_id)
            if lease is None:
                return
            renewed = await asyncio.to_thread(self.records.renew, job_id, lease, self._conf.lease_s)
            if renewed is None:
                logger.warning("conversion %s: the lease was taken over; abandoning", job_id)
                self._leases.pop(job_id, None)
                return
            self._leases[job_id] = renewed
            await asyncio.to_thread(self._push_progress, job_id, progress_file, log_file, started)

    def _push_progress(
        self, job_id: str, progress_file: Path, log_file: Path, started: str
    ) -> None:
        try:
            progress = json.loads(progress_file.read_text())
        except (OSError, ValueError):
            progress = {"step": "starting", "fraction": 0.0}
        lease = self._leases.get(job_id)
        self.records.write(
            job_id,
            "progress.json",
            {
                "step": str(progress.get("step", "starting")),
                "fraction": float(progress.get("fraction", 0.0)),
                "started_at": started,
                "replica": self.replica,
                "attempt": lease.attempt if lease else None,
            },
        )
        if log_file.is_file() and lease is not None:
            self.records.objects.put_file(
                self.records.key(job_id, "logs", f"{lease.attempt}.txt"), log_file
            )

    def _check_lease(self, job_id: str) -> Lease:
        lease = self._leases.get(job_id)
        if lease is None or lease.expired:
            raise _LeaseLostError
        return lease

    # -- running ---------------------------------------------------------------------------------

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            from .conversion_worker import init

            self._pool = ProcessPoolExecutor(
                max_workers=self._conf.workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=init,
                initargs=(logging.getLevelName(self._settings.log_level.upper()), os.getpid()),
            )
        return self._pool

    async def _work(self, job_id: str) -> None:
        scratch = Path(tempfile.mkdtemp(prefix=f"job-{job_id}-", dir=self._work_root()))
        try:
            record = await asyncio.to_thread(self.records.read, job_id, "job.json")
            if record is None:
                await asyncio.to_thread(self.records.dequeue, job_id)
                return
            if await asyncio.to_thread(self.records.read, job_id, "done.json") is not None:
                await asyncio.to_thread(self.records.dequeue, job_id)
                return
            result = await asyncio.to_thread(self.records.read, job_id, "result.json")
            held = self._check_lease(job_id)
            if result is None and held.attempt > MAX_ATTEMPTS:
                result = await self._give_up(job_id, held)
            if result is None:
                result = await self._attempt(job_id, record, scratch)
            if result is not None:
                await self._commit(job_id, record, result)
        except _LeaseLostError:
            logger.warning("conversion %s: lease lost; another replica goes on with it", job_id)
        except asyncio.CancelledError:
            lease = self._leases.pop(job_id, None)
            if lease is not None:  # shutting down: hand the job to another replica now
                with contextlib.suppress(Exception):
                    self.records.release(job_id, lease)
                logger.info("conversion %s given back for another replica", job_id)
            raise
        except Exception:
            logger.exception("conversion %s: this attempt failed; it is tried again", job_id)
            lease = self._leases.pop(job_id, None)
            if lease is not None:
                with contextlib.suppress(Exception):
                    await asyncio.to_thread(self.records.release, job_id, lease)
        finally:
            if self._closing:
                shutil.rmtree(scratch, ignore_errors=True)
            else:
                await asyncio.to_thread(shutil.rmtree, scratch, True)

    async def _attempt(
        self, job_id: str, record: dict[str, Any], scratch: Path
    ) -> dict[str, Any] | None:
        """Run the conversion; the result that counts (ours or an earlier attempt's), or
        ``None`` when the lease was lost."""
        from converters.jobs import JobSpec

        from .conversion_worker import run

        lease = self._check_lease(job_id)
        source = scratch / "source" / record["filename"]
        source.parent.mkdir()
        await asyncio.to_thread(
            self.records.objects.download,
            self.records.key(job_id, "source", record["filename"]),
            source,
        )
        progress_file = scratch / "progress.json"
        log_file = scratch / "worker.log"
        spec = JobSpec(
            upload=source,
            profiles=tuple(record["profiles"]),
            out_dir=scratch / "out",
            work_dir=scratch / "work",
            name=record["name"],
            version=str(record["version"]),
            progress_file=progress_file,
        )
        await asyncio.to_thread(self._push_progress, job_id, progress_file, log_file, _now())
        heartbeat = asyncio.create_task(self._heartbeat(job_id, progress_file, log_file))
        try:
            try:
                future = self._executor().submit(run, spec, log_file)
                outcome: dict[str, Any] = await asyncio.wrap_future(future)
            except BrokenProcessPool:
                self._pool = None
                if self._closing:
                    raise asyncio.CancelledError from None
                outcome = {
                    "ok": False,
                    "error": {
                        "kind": "WorkerDied",
                        "message": "the conversion worker process died (out of memory?)",
                    },
                }
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat
        lease = self._check_lease(job_id)
        attempt = lease.attempt
        await asyncio.to_thread(self._push_progress, job_id, progress_file, log_file, _now())
        result: dict[str, Any] = {
            "attempt": attempt,
            "replica": self.replica,
            "finished_at": _now(),
            "ok": bool(outcome.get("ok")),
        }
        if outcome.get("ok"):
            prefix = self.records.key(job_id, "attempts", str(attempt), "out")
            await asyncio.to_thread(self._upload_tree, scratch / "out", prefix)
            result["artifacts"] = [self._artifact_json(record, a) for a in outcome["artifacts"]]
            result["warnings"] = list(outcome.get("warnings", []))
        else:
            result["error"] = outcome.get("error")
        self._check_lease(job_id)
        if await asyncio.to_thread(self.records.write_once, job_id, "result.json", result):
            return result
        logger.info("conversion %s: an earlier attempt finished first; its result counts", job_id)
        return await asyncio.to_thread(self.records.read, job_id, "result.json")

    async def _give_up(self, job_id: str, lease: Lease) -> dict[str, Any] | None:
        result = {
            "attempt": lease.attempt,
            "replica": self.replica,
            "finished_at": _now(),
            "ok": False,
            "error": {
                "kind": "WorkerDied",
                "message": f"{MAX_ATTEMPTS} attempts died before finishing (out of memory?)",
            },
        }
        if await asyncio.to_thread(self.records.write_once, job_id, "result.json", result):
            return result
        return await asyncio.to_thread(self.records.read, job_id, "result.json")

    def _upload_tree(self, folder: Path, prefix: str) -> None:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                self.records.objects.put_file(
                    f"{prefix}/{path.relative_to(folder).as_posix()}", path
                )

    def _artifact_json(self, job: dict[str, Any], built: dict[str, Any]) -> dict[str, Any]:
        manifest = built["manifest"]
        base = f"/v1/artifacts/{job['name']}/{job['version']}/{built['folder']}"
        validation = manifest["validation"]
        return {
            "profile": built["profile"],
            "device_class": manifest["device_class"],
            "format": manifest["format"],
            "precision": manifest["precision"],
            "sha256": manifest["sha256"],
            "size_bytes": manifest["size_bytes"],
            "folder": built["folder"],
            "file": manifest["file"],
            "validation": {
                "passed": validation["passed"],
                "samples": validation["samples"],
                "samples_origin": validation["samples_origin"],
                "outputs": validation["outputs"],
                "latency": validation.get("latency"),
            },
            "files": {
                "model": f"{base}/{manifest['file']}",
                "manifest": f"{base}/manifest.json",
            },
        }

    async def _commit(self, job_id: str, record: dict[str, Any], result: dict[str, Any]) -> None:
        """Put the counted attempt's artifacts in place, publish if asked, mark the job done.
        Each step may be done again by a replica taking over, with the same bytes."""
        self._check_lease(job_id)
        artifacts = [
            {k: v for k, v in a.items() if k not in ("folder", "file")}
            for a in result.get("artifacts", [])
        ]
        done: dict[str, Any] = {
            "state": JobState.SUCCEEDED.value if result["ok"] else JobState.FAILED.value,
            "attempt": result["attempt"],
            "replica": result["replica"],
            "finished_at": result["finished_at"],
            "artifacts": artifacts,
            "warnings": result.get("warnings", []),
            "error": result.get("error"),
        }
        if result["ok"]:
            source = self.records.key(job_id, "attempts", str(result["attempt"]), "out")
            await asyncio.to_thread(self._place, source, record, result["artifacts"])
            publish = record.get("publish")
            if publish is not None:
                try:
                    done["published"] = await self._publish(record, publish, result)
                except HubError as exc:
                    done["published"] = {"error": exc.message}
                    done["state"] = JobState.FAILED.value
                    done["error"] = {"kind": "PublishFailed", "message": exc.message}
        else:  # nothing was stored under the reserved version: free it
            await asyncio.to_thread(
                self.records.objects.delete, f"{record['name']}/{record['version']}/{RESERVED}"
            )
        self._check_lease(job_id)
        if await asyncio.to_thread(self.records.write_once, job_id, "done.json", done):
            logger.log(
                logging.INFO if done["state"] == JobState.SUCCEEDED.value else logging.WARNING,
                "conversion %s %s (attempt %d)%s",
                job_id,
                done["state"],
                result["attempt"],
                f": {done['error'].get('message')}" if done.get("error") else "",
            )
        await asyncio.to_thread(self._tidy, job_id)

    def _place(self, source: str, record: dict[str, Any], built: list[dict[str, Any]]) -> None:
        objects = self.records.objects
        for artifact in built:
            folder = artifact["folder"]
            target = f"{record['name']}/{record['version']}/{folder}"
            files = [i.key for i in objects.list_objects(f"{source}/{folder}/")]
            # the manifest last: an artifact is listed once its manifest is there
            for key in sorted(files, key=lambda k: k.endswith(f"/{MANIFEST_FILENAME}")):
                objects.copy(key, f"{target}/{key.rsplit('/', 1)[-1]}")

    def _tidy(self, job_id: str) -> None:
        self.records.dequeue(job_id)
        objects = self.records.objects
        objects.delete_prefix(self.records.key(job_id, "attempts") + "/")
        objects.delete_prefix(self.records.key(job_id, "source") + "/")
        objects.delete_prefix(self.records.key(job_id, "lease") + "/")

    async def _publish(
        self, record: dict[str, Any], publish: dict[str, Any], result: dict[str, Any]
    ) -> dict[str, Any]:
        """Copy the chosen artifact into the repository as the model's next version, then load
        it where the hub would serve it (already loaded, or ``load_models`` names it)."""
        model, profile = publish["model_name"], publish["profile"]
        chosen = next(a for a in result["artifacts"] if a["profile"] == profile)
        backend = BACKEND_OF_FORMAT[chosen["format"]]
        prefix = f"{record['name']}/{record['version']}/{chosen['folder']}"
        async with self._publish_lock:
            with tempfile.TemporaryDirectory(dir=self._work_root()) as tmp:
                local = Path(tmp)
                for name in (chosen["file"], MANIFEST_FILENAME):
                    await asyncio.to_thread(
                        self.records.objects.download, f"{prefix}/{name}", local / name
                    )
                version = await asyncio.to_thread(
                    _write_version,
                    self._repository.root / model,
                    backend,
                    local,
                    chosen["file"],
                    record["id"],
                )
        published: dict[str, Any] = {"repository_version": str(version), "loaded": False}
        load_models = self._settings.load_models
        wanted = (
            bool(self._repository.versions(model))
            or load_models == "all"
            or (isinstance(load_models, list) and model in load_models)
        )
        if wanted:
            try:
                await self._repository.load(model)
                published["loaded"] = True
            except HubError as exc:
                published["load_error"] = exc.message
        return published

    # -- lifecycle -------------------------------------------------------------------------------

    async def close(self) -> None:
        """Stop taking jobs; running ones are given back (their worker stopped) for another
        replica to take at once."""
        self._closing = True
        self._wake.set()
        pool, self._pool = self._pool, None
        if pool is not None:
            if self._running:
                # ProcessPoolExecutor has no public way to stop a task that is running
                processes = list(getattr(pool, "_processes", {}).values())
                for process in processes:
                    process.terminate()
                for process in processes:
                    await asyncio.to_thread(process.join, 10.0)
            await asyncio.to_thread(pool.shutdown, wait=True, cancel_futures=True)
        tasks = list(self._running.values())
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)


def _write_version(folder: Path, backend: str, artifact: Path, file_name: str, job_id: str) -> int:
    folder.mkdir(exist_ok=True)
    config = folder / "config.yaml"
    if config.is_file():
        existing = load_model_config(config).backend
        if existing != backend:
            raise ConflictError(f"model {folder.name!r} is served by {existing}, not {backend}")
    else:
        temporary = folder / f".config-{job_id}.yaml"
        temporary.write_text(f"backend: {backend}\n")
        temporary.replace(config)
    numbers = [int(p.name) for p in folder.iterdir() if p.name.isdigit()]
    version = max(numbers, default=0) + 1
    staging = folder / f".publish-{job_id}"
    staging.mkdir()
    shutil.copy2(artifact / file_name, staging / load_backend_class(backend).model_file())
    shutil.copy2(artifact / "manifest.json", staging / "manifest.json")
    staging.rename(folder / str(version))
    return version


def router(
    settings: HubSettings, access: Access, repository: ModelRepository, store: ArtifactStore
) -> APIRouter:
    service = ConversionService(settings, repository, store)
    admin_scope = Depends(scope_check(access, "admin"))

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        poller = asyncio.create_task(service.poll(), name="conversion-poll")
        try:
            yield
        finally:
            await service.close()
            poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poller

    api = APIRouter(lifespan=lifespan)

    @api.post("/v1/conversions", dependencies=[admin_scope], status_code=202)
    async def create(
        request: Request,
        filename: str,
        profile: Annotated[list[str] | None, Query()] = None,
        name: str | None = None,
        publish_to_repository: bool = False,
        model_name: str | None = None,
        publish_profile: str | None = None,
    ) -> JSONResponse:
        job = await service.submit(
            request,
            filename=filename,
            profiles=profile or [],
            name=name,
            publish_to_repository=publish_to_repository,
            model_name=model_name,
            publish_profile=publish_profile,
        )
        return JSONResponse(
            job, status_code=202, headers={"Location": f"/v1/conversions/{job['id']}"}
        )

    @api.get("/v1/conversions", dependencies=[admin_scope])
    async def list_jobs() -> dict[str, Any]:
        return {"conversions": await service.jobs()}

    @api.get("/v1/conversions/{job_id}", dependencies=[admin_scope])
    async def get_job(job_id: str) -> dict[str, Any]:
        return await service.get(job_id)

    @api.get(
        "/v1/conversions/{job_id}/log",
        dependencies=[admin_scope],
        # Errors stay {"error": ...} JSON; only the log itself is text.
        responses={
            200: {
                "description": "the job's log, every attempt",
                "content": {"text/plain": {"schema": {"type": "string"}}},
            }
        },
    )
    async def get_log(job_id: str) -> PlainTextResponse:
        return PlainTextResponse(await service.log(job_id))

    return api
