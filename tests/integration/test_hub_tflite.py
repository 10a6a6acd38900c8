"""The hub serves the same .tflite artifacts the devices run, float and int8, through LiteRT."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import tritonclient.http as triton

from tests.support import models
from tests.support.hub import HubProcess

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def digits() -> models.DigitsModels:
    return models.require(models.ensure_digits_models)  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def hub(
    digits: models.DigitsModels, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[HubProcess]:
    repo = tmp_path_factory.mktemp("repo")
    for kind in models.DIGITS_KINDS:
        folder = repo / f"digits_{kind}"
        (folder / "1").mkdir(parents=True)
        (folder / "1" / "model.tflite").symlink_to(digits.model(kind))
        (folder / "config.yaml").write_text(
            "backend: tflite\nmax_batch_size: 64\ninstance_count: 2\n"
            "dynamic_batching: {max_queue_delay_us: 1000}\nlabels: labels.txt\n"
        )
        (folder / "labels.txt").write_text(digits.labels.read_text())
    process = HubProcess(repository=repo, workdir=tmp_path_factory.mktemp("hub"))
    process.start()
    yield process
    process.stop()


@pytest.mark.parametrize("kind", models.DIGITS_KINDS)
def test_answers_match_the_interpreter_run_directly(
    hub: HubProcess, digits: models.DigitsModels, kind: str
) -> None:
    x, _ = digits.data()
    expected = digits.reference(kind)
    client = triton.InferenceServerClient(hub.url)
    meta = client.get_model_metadata(f"digits_{kind}")
    assert meta["platform"] == "tflite"
    assert meta["inputs"][0]["datatype"] == "FP32"  # int8 models too: callers speak float
    batch = x[:40]
    tin = triton.InferInput(models.DIGITS_INPUT, list(batch.shape), "FP32")
    tin.set_data_from_numpy(batch)
    got = client.infer(f"digits_{kind}", [tin]).as_numpy(models.DIGITS_OUTPUT)
    client.close()
    if kind == "int8":
        step = models.output_scale(models.first_available_runtime(), digits.model(kind))
        np.testing.assert_allclose(got, expected[:40], atol=step * 1.01)
    else:
        np.testing.assert_allclose(got, expected[:40], rtol=1e-5, atol=1e-6)


def test_concurrent_batches_on_a_pool_of_interpreters(
    hub: HubProcess, digits: models.DigitsModels
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    x, _ = digits.data()
    expected = digits.reference("fp32")

    def one(i: int) -> bool:
        client = triton.InferenceServerClient(hub.url)
        tin = triton.InferInput(models.DIGITS_INPUT, [1, x.shape[1]], "FP32")
        tin.set_data_from_numpy(x[i : i + 1])
        out = client.infer("digits_fp32", [tin]).as_numpy(models.DIGITS_OUTPUT)
        client.close()
        return bool(np.allclose(out, expected[i : i + 1], rtol=1e-5, atol=1e-6))

    with ThreadPoolExecutor(16) as pool:
        assert all(pool.map(one, range(48)))


def test_top_label_from_the_labels_file(hub: HubProcess, digits: models.DigitsModels) -> None:
    x, _ = digits.data()
    expected = digits.reference("fp32")
    client = triton.InferenceServerClient(hub.url)
    tin = triton.InferInput(models.DIGITS_INPUT, [1, x.shape[1]], "FP32")
    tin.set_data_from_numpy(x[:1])
    out = client.infer(
        "digits_fp32",
        [tin],
        outputs=[triton.InferRequestedOutput(models.DIGITS_OUTPUT, class_count=1)],
    ).as_numpy(models.DIGITS_OUTPUT)
    client.close()
    _, index, label = out[0, 0].decode().split(":")
    assert int(index) == int(np.argmax(expected[0]))
    assert label == models.DIGITS_LABELS[int(index)]


def test_tflite_backend_reports_its_runtime(hub: HubProcess) -> None:
    client = triton.InferenceServerClient(hub.url)
    config = client.get_model_config("digits_fp16")
    client.close()
    assert config["runtime"].startswith("tflite:")
    assert config["backend"] == "tflite"
