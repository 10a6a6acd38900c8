"""Conversion jobs as records in the shared store, and the lease that says which replica runs one.

Keys, per job (``<id>`` is a random hex id)::

    .jobs/<id>/job.json              what was asked (name, version, profiles, source...); written once
    .jobs/<id>/source/<filename>     the uploaded model
    .jobs/<id>/lease/<generation>    who runs it: {"owner", "attempt", "expires_s"}
    .jobs/<id>/progress.json         the running attempt's step and fraction
    .jobs/<id>/attempts/<n>/out/     an attempt's artifacts, before one attempt's are chosen
    .jobs/<id>/logs/<n>.txt          an attempt's worker log
    .jobs/<id>/result.json           the outcome, written once (put_if_absent): the first
                                     attempt to write it is the one whose artifacts count
    .jobs/<id>/done.json             written after the chosen artifacts are in place
    .queue/<id>                      present while the job is not done

The lease is a sequence of records written with ``put_if_absent``; the newest generation holds.
Its owner renews it by writing the next generation before it expires; another replica takes an
expired lease the same way, so of replicas racing for a job exactly one gets it, and an owner
whose renewal fails knows it lost the job and writes nothing more. Expiry times are wall-clock
seconds: the replicas' clocks must agree to well within ``lease_s`` (NTP does).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from .errors import StoreObjectMissingError
from .store import ObjectStore

__all__ = ["JOBS", "QUEUE", "JobRecords", "Lease"]

JOBS = ".jobs"
QUEUE = ".queue"


@dataclass(frozen=True, kw_only=True)
class Lease:
    generation: int
    owner: str
    attempt: int
    expires_s: float

    @property
    def expired(self) -> bool:
        return self.expires_s <= time.time()


class JobRecords:
    """Blocking calls on the store; the conversion service runs them in threads."""

    def __init__(self, objects: ObjectStore) -> None:
        self.objects = objects

    @staticmethod
    def key(job_id: str, *parts: str) -> str:
        return "/".join((JOBS, job_id, *parts))

    # -- records -----------------------------------------------------------------------------

    def create(self, job_id: str, record: dict[str, Any]) -> None:
        """Store the job record and put the job in the queue (the source is stored before)."""
        self.objects.put_if_absent(self.key(job_id, "job.json"), _dump(record))
        self.objects.put(f"{QUEUE}/{job_id}", b"")

    def read(self, job_id: str, name: str) -> dict[str, Any] | None:
        try:
            data = json.loads(self.objects.get(self.key(job_id, name)))
        except (StoreObjectMissingError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def write(self, job_id: str, name: str, record: dict[str, Any]) -> None:
        self.objects.put(self.key(job_id, name), _dump(record))

    def write_once(self, job_id: str, name: str, record: dict[str, Any]) -> bool:
        return self.objects.put_if_absent(self.key(job_id, name), _dump(record))

    def queued(self) -> list[str]:
        """Ids of the jobs not done yet, oldest first where the store keeps times."""
        return [
            i.key.rsplit("/", 1)[-1]
            for i in sorted(self.objects.list_objects(f"{QUEUE}/"), key=lambda i: i.modified_s)
        ]

    def dequeue(self, job_id: str) -> None:
        self.objects.delete(f"{QUEUE}/{job_id}")

    def all_ids(self) -> list[str]:
        return self.objects.children(f"{JOBS}/")

    # -- the lease ---------------------------------------------------------------------------

    def lease(self, job_id: str) -> Lease | None:
        """The newest lease record, or ``None`` when nobody ever took the job."""
        generations = sorted(
            int(name)
            for info in self.objects.list_objects(self.key(job_id, "lease") + "/")
            if (name := info.key.rsplit("/", 1)[-1]).isdigit()
        )
        for generation in reversed(generations):
            record = self.read(job_id, f"lease/{generation:08d}")
            if record is not None:
                return Lease(
                    generation=generation,
                    owner=str(record["owner"]),
                    attempt=int(record["attempt"]),
                    expires_s=float(record["expires_s"]),
                )
        return None

    def take(self, job_id: str, owner: str, lease_s: float) -> Lease | None:
        """Take the job when nobody holds it (never taken, or the lease expired): the new
        lease, or ``None`` when another replica holds it or got it first."""
        current = self.lease(job_id)
        if current is not None and not current.expired:
            return None
        generation = 1 if current is None else current.generation + 1
        attempt = 1 if current is None else current.attempt + 1
        return self._write_lease(job_id, generation, owner, attempt, time.time() + lease_s)

    def renew(self, job_id: str, lease: Lease, lease_s: float) -> Lease | None:
        """Extend our lease: the next generation, or ``None`` when the job was taken from us."""
        renewed = self._write_lease(
            job_id, lease.generation + 1, lease.owner, lease.attempt, time.time() + lease_s
        )
        if renewed is not None:
            self.objects.delete(self.key(job_id, f"lease/{lease.generation:08d}"))
        return renewed

    def release(self, job_id: str, lease: Lease) -> None:
        """Give the job up now (a replica shutting down): an expired lease, so any replica
        takes it at its next look."""
        self._write_lease(job_id, lease.generation + 1, lease.owner, lease.attempt, 0.0)

    def _write_lease(
        self, job_id: str, generation: int, owner: str, attempt: int, expires_s: float
    ) -> Lease | None:
        record = {"owner": owner, "attempt": attempt, "expires_s": expires_s}
        if not self.write_once(job_id, f"lease/{generation:08d}", record):
            return None
        return Lease(generation=generation, owner=owner, attempt=attempt, expires_s=expires_s)


def _dump(record: dict[str, Any]) -> bytes:
    return json.dumps(record, sort_keys=True).encode("utf-8")
