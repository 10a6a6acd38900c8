"""Fuzzing a real hub process over HTTP.

schemathesis generates requests from the hub's own OpenAPI schema (``/openapi.json``) for every
documented operation and checks each answer: no 5xx, the status code documented, the body and
its content type matching the schema. The inference route is served by the ASGI fast path in
front of FastAPI and is not in that schema, so hypothesis fuzzes it directly with mutated and
arbitrary bodies: every answer is a 2xx, or a 4xx with ``{"error": "..."}``; never a 5xx, never
a dropped connection; and the hub still answers a good request afterwards.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import positive_data_acceptance
from schemathesis.core.failures import FailureGroup

from tests.reliability.conftest import record, sized
from tests.reliability.test_fuzz_protocols import encoded_requests, mutated, request_documents
from tests.support.hub import HubProcess

pytestmark = pytest.mark.integration

GOOD = json.dumps(
    {
        "id": "good",
        "inputs": [
            {"name": "INPUT0", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]},
            {"name": "INPUT1", "shape": [1, 4], "datatype": "FP32", "data": [1, 1, 1, 1]},
        ],
    }
).encode()


@pytest.fixture(scope="module")
def hub(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubProcess]:
    process = HubProcess(repository=repository, workdir=tmp_path_factory.mktemp("hub"))
    process.start()
    yield process
    process.stop()


def _fuzz_operation(operation: Any, mode: GenerationMode, base_url: str) -> dict[str, Any]:
    """Run ``operation``'s generated cases against the hub; what failed, by check."""
    seen: dict[str, Any] = {"cases": 0, "5xx": 0, "failures": []}

    @settings(
        max_examples=sized(15, 300),
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case: Any) -> None:
        seen["cases"] += 1
        try:
            response = case.call_and_validate(
                base_url=base_url, excluded_checks=[positive_data_acceptance]
            )
        except (Exception, FailureGroup) as exc:  # check failures, kept for the report
            seen["failures"].append(f"{case.method} {case.formatted_path}: {exc}")
            return
        seen["5xx"] += response.status_code >= 500

    try:
        run()
    except Unsatisfiable:  # nothing to make negative: an operation without parameters
        assert mode is GenerationMode.NEGATIVE
    return seen


def test_openapi_operations(hub: HubProcess) -> None:
    """Every documented operation, with data that fits its schema (positive) and data that
    does not (negative): no 5xx and no answer outside the schema."""
    schema = schemathesis.openapi.from_url(f"http://{hub.url}/openapi.json")
    cases = server_errors = 0
    failures: list[str] = []
    operations = [result.ok() for result in schema.get_all_operations()]
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            seen = _fuzz_operation(operation, mode, f"http://{hub.url}")
            cases += seen["cases"]
            server_errors += seen["5xx"]
            failures += seen["failures"]
    record(
        "openapi_fuzz",
        operations=len(operations),
        cases=cases,
        server_errors=server_errors,
        check_failures=len(failures),
        first_failures=failures[:400],
    )
    assert hub.process is not None
    assert hub.process.poll() is None
    assert failures == []
    assert server_errors == 0


@st.composite
def infer_calls(draw: st.DrawFn) -> tuple[str, bytes, dict[str, str]]:
    """A path (the real model, an unknown one, odd versions), a body, and headers."""
    path = draw(
        st.sampled_from(
            [
                "/v2/models/add_sub/infer",
                "/v2/models/add_sub/versions/1/infer",
                "/v2/models/add_sub/versions/x/infer",
                "/v2/models/nope/infer",
                "/v2/models/%00%ff/infer",
            ]
        )
    )
    body = draw(
        st.one_of(
            st.binary(max_size=256),
            request_documents().map(lambda doc: json.dumps(doc).encode()),
            mutated(encoded_requests()),
            mutated(st.just(GOOD)),
        )
    )
    headers: dict[str, str] = {}
    if draw(st.booleans()):
        headers["Inference-Header-Content-Length"] = str(
            draw(
                st.one_of(
                    st.integers(-3, len(body) + 3), st.sampled_from(["x", " 8 ", "\xb9", "\xb2"])
                )
            )
        )
    return path, body, headers


def test_inference_route(hub: HubProcess) -> None:
    """Arbitrary and mutated bodies on the inference route: 200, or a 4xx ``{"error": ...}``."""
    statuses: dict[int, int] = {}
    bad_bodies: list[str] = []
    conn = http.client.HTTPConnection("127.0.0.1", hub.port, timeout=30)

    @settings(
        max_examples=sized(400, 20_000),
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(call=infer_calls())
    def run(call: tuple[str, bytes, dict[str, str]]) -> None:
        path, body, headers = call
        conn.request("POST", path, body=body, headers=headers)
        reply = conn.getresponse()
        payload = reply.read()
        statuses[reply.status] = statuses.get(reply.status, 0) + 1
        if reply.status >= 400:
            try:
                error = json.loads(payload)["error"]
            except (ValueError, KeyError, TypeError):
                error = None
            if not isinstance(error, str) or not error:
                bad_bodies.append(f"{reply.status} {payload[:200]!r}")
        if reply.getheader("connection", "").lower() == "close":
            conn.close()

    try:
        run()
        conn.request("POST", "/v2/models/add_sub/infer", body=GOOD)
        after = conn.getresponse()
        answer = json.loads(after.read())
    finally:
        conn.close()
    record(
        "infer_route_fuzz",
        cases=sum(statuses.values()),
        statuses={str(k): v for k, v in sorted(statuses.items())},
        server_errors=sum(v for k, v in statuses.items() if k >= 500),
        bad_error_bodies=len(bad_bodies),
    )
    assert all(status < 500 for status in statuses)
    assert bad_bodies == []
    assert after.status == 200
    assert answer["outputs"][0]["data"] == [2, 3, 4, 5]
