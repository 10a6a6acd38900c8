"""Conversion jobs on the hub: ``model-convert`` as a service (``admin`` scope).

``POST /v1/conversions?filename=digits.keras&profile=rpi4-litert-fp16&profile=cloud-cpu-onnx``
with the source model as the raw request body (``application/octet-stream``; an archive may also
carry ``calibration.npz`` and ``samples.npz``, see :mod:`converters.jobs`) answers 202 with the
job. Optional query parameters: ``name`` (the artifacts' name, by default the file's stem),
``publish_to_repository=true`` with ``model_name`` (and ``publish_profile`` when several
profiles are built) to add the artifact to the model repository as a new version.

The upload is streamed to disk, bounded by ``limits.payload_max_bytes``. Jobs run one at a time
(``workers``) in a worker process started with ``spawn``, never in the hub's event loop or its
threads, so TensorFlow never loads into the hub itself; at most ``max_pending`` jobs wait or
run, beyond that the answer is 503. ``GET /v1/conversions/{id}`` reports the state (``queued``,
``running``, ``succeeded``, ``failed``), progress, the artifacts with their download paths, and
the error with its validation report. Jobs are kept in memory: a restarted hub forgets them, while
the artifacts stay in the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import enum
import json
import logging
import multiprocessing
import shutil
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.responses import JSONResponse

from protocols import MODEL_NAME

from .access import Access
from .artifacts import ArtifactStore, scope_check, store_root
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
from .model_config import load_model_config
from .repository import ModelRepository
from .settings import HubSettings

__all__ = ["ConversionService", "Job", "JobState", "router"]

logger = logging.getLogger(__name__)

UPLOAD_SUFFIXES = (".keras", ".h5", ".onnx", ".zip", ".tar", ".tar.gz", ".tgz")
BACKEND_OF_FORMAT = {"tflite": "tflite", "onnx": "onnxruntime", "tensorrt": "tensorrt"}
STALE_WORK_S = 24 * 3600.0
WRITE_CHUNK_BYTES = 1 << 20


class JobState(str, enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


@dataclass(frozen=True, kw_only=True)
class Publish:
    model_name: str
    profile: str


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat().replace("+00:00", "Z")


@dataclass
class Job:
    id: str
    name: str
    version: int
    profiles: tuple[str, ...]
    filename: str
    size_bytes: int
    publish: Publish | None
    state: JobState = JobState.QUEUED
    created_at: str = field(default_factory=_now)
    started_at: str | None = None
    finished_at: str | None = None
    progress_file: Path | None = None
    step: str = "queued"
    fraction: float = 0.0
    artifacts: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    published: dict[str, Any] | None = None
    error: dict[str, Any] | None = None

    def refresh(self) -> None:
        """Pick up the worker's progress file while the job is not finished."""
        if self.state not in (JobState.QUEUED, JobState.RUNNING) or self.progress_file is None:
            return
        try:
            progress = json.loads(self.progress_file.read_text())
        except (OSError, ValueError):
            return
        if self.state is JobState.QUEUED:
            self.state = JobState.RUNNING
            self.started_at = _now()
        self.step = str(progress.get("step", self.step))
        self.fraction = float(progress.get("fraction", self.fraction))

    def as_json(self) -> dict[str, Any]:
        self.refresh()
        return {
            "id": self.id,
            "state": self.state.value,
            "progress": {"fraction": self.fraction, "step": self.step},
            "name": self.name,
            "version": str(self.version),
            "profiles": list(self.profiles),
            "source": {"filename": self.filename, "size_bytes": self.size_bytes},
            "created_at": self.created_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "artifacts": self.artifacts,
            "warnings": self.warnings,
            "publish": (
                None
                if self.publish is None
                else {
                    "model_name": self.publish.model_name,
                    "profile": self.publish.profile,
                    **(self.published or {}),
                }
            ),
            "error": self.error,
        }


class ConversionService:
    """Accepts uploads, queues jobs for the worker process, moves results into the store."""

    def __init__(
        self,
        settings: HubSettings,
        repository: ModelRepository,
        *,
        workers: int = 1,
        max_pending: int = 8,
        max_kept: int = 200,
    ) -> None:
        self._settings = settings
        self._repository = repository
        self.store = ArtifactStore(store_root(settings))
        self._workers = workers
        self._max_pending = max_pending
        self._max_kept = max_kept
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._tasks: set[asyncio.Task[None]] = set()
        self._pool: ProcessPoolExecutor | None = None
        self._publish_lock = asyncio.Lock()
        self._closing = False

    # -- requests --------------------------------------------------------------------------------

    def get(self, job_id: str) -> Job:
        job = self._jobs.get(job_id)
        if job is None:
            raise JobNotFoundError(f"no conversion job {job_id!r}")
        return job

    def jobs(self) -> list[Job]:
        return list(self._jobs.values())

    def _pending(self) -> list[Job]:
        return [j for j in self._jobs.values() if j.state in (JobState.QUEUED, JobState.RUNNING)]

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
    ) -> Job:
        content_type = request.headers.get("content-type", "")
        if content_type.startswith("multipart/"):
            raise UnsupportedMediaTypeError(
                "send the model as the raw request body (application/octet-stream) with "
                "?filename=...; multipart forms are not taken"
            )
        name, wanted, publish = self._check_request(
            filename, profiles, name, publish_to_repository, model_name, publish_profile
        )
        if len(self._pending()) >= self._max_pending:
            raise QueueFullError(
                f"{self._max_pending} conversions are queued or running; try again later"
            )
        reserved = {j.version for j in self._pending() if j.name == name}
        job = Job(
            id=uuid.uuid4().hex,
            name=name,
            version=self.store.next_version(name, reserved),
            profiles=wanted,
            filename=filename,
            size_bytes=0,
            publish=publish,
        )
        upload_dir = self.store.work_dir("uploads", job.id)
        upload_dir.mkdir(parents=True)
        try:
            job.size_bytes = await self._receive(request, upload_dir / filename)
        except BaseException:
            shutil.rmtree(upload_dir, ignore_errors=True)
            raise
        if job.size_bytes == 0:
            shutil.rmtree(upload_dir, ignore_errors=True)
            raise BadRequestError("the request body is empty; send the model file as the body")
        self._jobs[job.id] = job
        self._forget_old()
        task = asyncio.create_task(self._run(job, upload_dir), name=f"conversion-{job.id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        logger.info(
            "conversion %s queued: %s (%d bytes) for %s",
            job.id,
            filename,
            job.size_bytes,
            ", ".join(wanted),
        )
        return job

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

    def _forget_old(self) -> None:
        finished = [
            j for j in self._jobs.values() if j.state in (JobState.SUCCEEDED, JobState.FAILED)
        ]
        for job in finished[: max(0, len(self._jobs) - self._max_kept)]:
            del self._jobs[job.id]

    # -- running -----------------------------------------------------------------------------------

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            from converters.jobs import init_worker

            self._pool = ProcessPoolExecutor(
                max_workers=self._workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=init_worker,
                initargs=(logging.getLevelName(self._settings.log_level.upper()),),
            )
        return self._pool

    async def _run(self, job: Job, upload_dir: Path) -> None:
        from converters.jobs import JobSpec, run_job

        build_dir = self.store.work_dir("staging", job.id)
        job.progress_file = upload_dir / "progress.json"
        spec = JobSpec(
            upload=upload_dir / job.filename,
            profiles=job.profiles,
            out_dir=build_dir / "out",
            work_dir=build_dir / "work",
            name=job.name,
            version=str(job.version),
            progress_file=job.progress_file,
        )
        try:
            try:
                future = self._executor().submit(run_job, spec)
                outcome = await asyncio.wrap_future(future)
            except BrokenProcessPool:
                self._pool = None
                reason = (
                    "the hub shut down while the conversion ran"
                    if self._closing
                    else "the conversion worker process died (out of memory?)"
                )
                outcome = {"ok": False, "error": {"kind": "WorkerDied", "message": reason}}
            job.refresh()
            if not outcome.get("ok"):
                self._finish(job, JobState.FAILED, error=outcome.get("error"))
                return
            target = await asyncio.to_thread(
                self.store.commit, build_dir / "out", job.name, job.version
            )
            job.artifacts = [self._artifact_json(job, a) for a in outcome["artifacts"]]
            job.warnings = list(outcome.get("warnings", []))
            if job.publish is not None:
                try:
                    job.published = await self._publish(job, target)
                except HubError as exc:
                    job.published = {"error": exc.message}
                    self._finish(
                        job,
                        JobState.FAILED,
                        error={"kind": "PublishFailed", "message": exc.message},
                    )
                    return
            self._finish(job, JobState.SUCCEEDED)
        except asyncio.CancelledError:
            self._finish(
                job, JobState.FAILED, error={"kind": "Cancelled", "message": "the hub shut down"}
            )
            raise
        except Exception as exc:
            logger.exception("conversion %s failed", job.id)
            self._finish(job, JobState.FAILED, error={"kind": "InternalError", "message": str(exc)})
        finally:
            if self._closing:
                _remove(upload_dir, build_dir)  # the loop is about to stop: no thread hand-off
            else:
                await asyncio.to_thread(_remove, upload_dir, build_dir)

    def _artifact_json(self, job: Job, built: dict[str, Any]) -> dict[str, Any]:
        manifest = built["manifest"]
        base = f"/v1/artifacts/{job.name}/{job.version}/{built['folder']}"
        validation = manifest["validation"]
        return {
            "profile": built["profile"],
            "device_class": manifest["device_class"],
            "format": manifest["format"],
            "precision": manifest["precision"],
            "sha256": manifest["sha256"],
            "size_bytes": manifest["size_bytes"],
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

    def _finish(self, job: Job, state: JobState, *, error: dict[str, Any] | None = None) -> None:
        job.state = state
        job.error = error
        job.finished_at = _now()
        if state is JobState.SUCCEEDED:
            job.step, job.fraction = "done", 1.0
        logger.log(
            logging.INFO if state is JobState.SUCCEEDED else logging.WARNING,
            "conversion %s %s%s",
            job.id,
            state.value,
            f": {error.get('message')}" if error else "",
        )

    async def _publish(self, job: Job, artifacts: Path) -> dict[str, Any]:
        """Copy the chosen artifact into the repository as the model's next version, then load
        it where the hub would serve it (already loaded, or ``load_models`` names it)."""
        assert job.publish is not None
        model, profile = job.publish.model_name, job.publish.profile
        manifest = json.loads((artifacts / profile / "manifest.json").read_text())
        backend = BACKEND_OF_FORMAT[manifest["format"]]
        async with self._publish_lock:
            version = await asyncio.to_thread(
                _write_version,
                self._repository.root / model,
                backend,
                artifacts / profile,
                manifest["file"],
                job.id,
            )
        result: dict[str, Any] = {"repository_version": str(version), "loaded": False}
        load_models = self._settings.load_models
        wanted = (
            bool(self._repository.versions(model))
            or load_models == "all"
            or (isinstance(load_models, list) and model in load_models)
        )
        if wanted:
            try:
                await self._repository.load(model)
                result["loaded"] = True
            except HubError as exc:
                result["load_error"] = exc.message
        return result

    # -- lifecycle -------------------------------------------------------------------------------

    def clean_stale(self) -> None:
        """Remove work folders left by a hub that stopped mid-job (older than a day)."""
        cutoff = time.time() - STALE_WORK_S
        for kind in ("uploads", "staging"):
            folder = self.store.root / f".{kind}"
            if not folder.is_dir():
                continue
            for entry in folder.iterdir():
                with contextlib.suppress(OSError):
                    if entry.stat().st_mtime < cutoff:
                        shutil.rmtree(entry, ignore_errors=True)

    async def close(self) -> None:
        """Stop the worker: a running conversion is abandoned (its job fails), an idle worker
        exits cleanly."""
        self._closing = True
        pool, self._pool = self._pool, None
        if pool is not None:
            if self._pending():
                # ProcessPoolExecutor has no public way to stop a task that is running
                processes = list(getattr(pool, "_processes", {}).values())
                for process in processes:
                    process.terminate()
                for process in processes:
                    await asyncio.to_thread(process.join, 10.0)
            await asyncio.to_thread(pool.shutdown, wait=True, cancel_futures=True)
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=10.0)
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


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


def _remove(*folders: Path) -> None:
    for folder in folders:
        shutil.rmtree(folder, ignore_errors=True)


def router(
    settings: HubSettings,
    access: Access,
    repository: ModelRepository,
    *,
    workers: int = 1,
    max_pending: int = 8,
) -> APIRouter:
    service = ConversionService(settings, repository, workers=workers, max_pending=max_pending)
    admin_scope = Depends(scope_check(access, "admin"))

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await asyncio.to_thread(service.clean_stale)
        try:
            yield
        finally:
            await service.close()

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
            job.as_json(), status_code=202, headers={"Location": f"/v1/conversions/{job.id}"}
        )

    @api.get("/v1/conversions", dependencies=[admin_scope])
    async def list_jobs() -> dict[str, Any]:
        return {"conversions": [job.as_json() for job in service.jobs()]}

    @api.get("/v1/conversions/{job_id}", dependencies=[admin_scope])
    async def get_job(job_id: str) -> dict[str, Any]:
        return service.get(job_id).as_json()

    return api
