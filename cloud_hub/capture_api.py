"""The capture's HTTP API, all in the ``admin`` scope (captured inputs are the fleet's data):

GET    /v1/capture/shards[?model=]              list shards, oldest first
GET    /v1/capture/shards/{model}/{shard}       download one (.npz)
DELETE /v1/capture/shards/{model}/{shard}       delete one
DELETE /v1/capture/shards/{model}               delete all of a model's, and its buffer
POST   /v1/capture/flush[?model=]               write buffered records as shards now
GET    /v1/capture/thresholds?model=&target_accuracy=[&device_class=&device_model_version=&output=]
                                                the threshold recommendation
                                                (:mod:`cloud_hub.thresholds`)
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Depends
from fastapi.responses import Response

from .access import Access
from .artifacts import scope_check
from .capture import Capture
from .thresholds import recommend

__all__ = ["router"]


def router(capture: Capture, access: Access) -> APIRouter:
    admin = Depends(scope_check(access, "admin"))
    api = APIRouter()

    @api.get("/v1/capture/shards", dependencies=[admin])
    async def list_shards(model: str | None = None) -> dict[str, Any]:
        shards = await asyncio.to_thread(capture.shards, model)
        return {
            "shards": [s.as_json() for s in shards],
            "records": sum(s.records for s in shards),
            "size_bytes": sum(s.size_bytes for s in shards),
        }

    @api.get("/v1/capture/shards/{model}/{shard}", dependencies=[admin])
    async def download(model: str, shard: str) -> Response:
        data = await asyncio.to_thread(capture.store.read, model, shard)
        return Response(
            data,
            media_type="application/octet-stream",
            headers={"Content-Disposition": f'attachment; filename="{shard}"'},
        )

    @api.delete("/v1/capture/shards/{model}/{shard}", dependencies=[admin])
    async def delete_shard(model: str, shard: str) -> dict[str, int]:
        return {"deleted": await asyncio.to_thread(capture.delete, model, shard)}

    @api.delete("/v1/capture/shards/{model}", dependencies=[admin])
    async def delete_model(model: str) -> dict[str, int]:
        return {"deleted": await asyncio.to_thread(capture.delete, model)}

    @api.post("/v1/capture/flush", dependencies=[admin])
    async def flush(model: str | None = None) -> dict[str, Any]:
        written = await asyncio.to_thread(capture.flush, model)
        return {"written": [s.as_json() for s in written]}

    @api.get("/v1/capture/thresholds", dependencies=[admin])
    async def thresholds(
        model: str,
        target_accuracy: float = 0.99,
        device_class: str | None = None,
        device_model_version: str | None = None,
        output: str | None = None,
    ) -> dict[str, Any]:
        def compute() -> dict[str, Any]:
            found = recommend(
                capture.records(model),
                target_accuracy=target_accuracy,
                output=output,
                device_class=device_class,
                device_model_version=device_model_version,
            )
            return {
                "model": model,
                "device_class": device_class,
                "device_model_version": device_model_version,
                **found.as_json(),
            }

        return await asyncio.to_thread(compute)

    return api
