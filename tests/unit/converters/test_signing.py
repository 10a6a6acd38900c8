"""Signing releases (converters.signing, model-convert keygen/sign) and checking them with the
agent's verifier: the two sides share only the bytes."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import numpy as np
import pytest

from converters.cli import main
from converters.errors import ArtifactError
from converters.signing import SigningError, load_private_key, make_release, sign_release
from edge_agent.updater import Reason, RejectedError, TrustedKeys, verify_signatures
from protocols import RELEASE_FILENAME, SignedRelease, release_signing_bytes
from tests.support import models
from tests.support.updates import make_artifact, make_keys, read_manifest, sign


@pytest.fixture(scope="module")
def model_file() -> Path:
    digits = models.require(models.ensure_digits_models)
    return digits.model("fp32")


def test_keygen_writes_a_private_key_only_its_owner_reads(tmp_path: Path, capfd) -> None:
    assert main(["keygen", str(tmp_path / "k"), "--json"]) == 0
    out = json.loads(capfd.readouterr().out)
    private = Path(out["private_key"])
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert Path(out["public_key"]).read_text().startswith("-----BEGIN PUBLIC KEY-----")
    keys = TrustedKeys.load([out["public_base64"]])
    assert list(keys.keys) == [out["key_id"]]
    assert TrustedKeys.load([out["public_key"]]).keys.keys() == keys.keys.keys()
    assert main(["keygen", str(tmp_path / "k")]) == SigningError.exit_code  # no overwrite


def test_sign_then_verify_with_the_agent(tmp_path: Path, model_file: Path) -> None:
    keys = make_keys(tmp_path)
    folder = make_artifact(tmp_path / "a", model_file, version="2", smoke=False)
    raw = sign(folder, [keys])
    assert json.loads((folder / RELEASE_FILENAME).read_text()) == raw
    trusted = TrustedKeys.load([keys.public_base64])
    assert verify_signatures(raw, trusted, 1) == 1
    assert SignedRelease.model_validate(raw).manifest == read_manifest(folder)


def test_cli_sign_adds_a_second_signature_and_counts_each_key_once(
    tmp_path: Path, model_file: Path
) -> None:
    first, second = make_keys(tmp_path, "one"), make_keys(tmp_path, "two")
    folder = make_artifact(tmp_path / "a", model_file, version="3", smoke=False)
    assert main(["sign", str(folder), "--key", str(first.private_path)]) == 0
    assert main(["sign", str(folder), "--key", str(first.private_path)]) == 0  # no duplicate
    raw = json.loads((folder / RELEASE_FILENAME).read_text())
    assert len(raw["signatures"]) == 1
    trusted = TrustedKeys.load([first.public_base64, second.public_base64])
    with pytest.raises(RejectedError) as caught:
        verify_signatures(raw, trusted, 2)
    assert caught.value.reason is Reason.SIGNATURE
    assert main(["sign", str(folder), "--key", str(second.private_path)]) == 0
    raw = json.loads((folder / RELEASE_FILENAME).read_text())
    assert verify_signatures(raw, trusted, 2) == 2
    # The same signature pasted twice is still one key.
    raw["signatures"] = [raw["signatures"][0]] * 3
    with pytest.raises(RejectedError):
        verify_signatures(raw, trusted, 2)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("sha256", "f" * 64),
        ("size_bytes", 1),
        ("version", "99"),
        ("device_class", "other"),
        ("name", "other"),
    ],
)
def test_any_change_to_the_signed_manifest_breaks_the_signature(
    tmp_path: Path, model_file: Path, field: str, value: object
) -> None:
    keys = make_keys(tmp_path)
    raw = sign(make_artifact(tmp_path / "a", model_file, version="2", smoke=False), [keys])
    raw["signed"]["manifest"][field] = value
    with pytest.raises(RejectedError) as caught:
        verify_signatures(raw, TrustedKeys.load([keys.public_base64]), 1)
    assert caught.value.reason is Reason.SIGNATURE


def test_expiry_is_signed_too(tmp_path: Path, model_file: Path) -> None:
    keys = make_keys(tmp_path)
    raw = sign(make_artifact(tmp_path / "a", model_file, version="2", smoke=False), [keys])
    raw["signed"]["expires_at"] = "2999-01-01T00:00:00Z"
    with pytest.raises(RejectedError):
        verify_signatures(raw, TrustedKeys.load([keys.public_base64]), 1)


def test_an_unknown_key_does_not_count(tmp_path: Path, model_file: Path) -> None:
    signer, other = make_keys(tmp_path, "signer"), make_keys(tmp_path, "other")
    raw = sign(make_artifact(tmp_path / "a", model_file, version="2", smoke=False), [signer])
    with pytest.raises(RejectedError) as caught:
        verify_signatures(raw, TrustedKeys.load([other.public_base64]), 1)
    assert caught.value.reason is Reason.SIGNATURE


def test_sign_refuses_a_file_that_does_not_match_its_manifest(
    tmp_path: Path, model_file: Path
) -> None:
    keys = make_keys(tmp_path)
    folder = make_artifact(tmp_path / "a", model_file, version="2", smoke=False)
    data = bytearray((folder / "model.tflite").read_bytes())
    data[100] ^= 1
    (folder / "model.tflite").write_bytes(bytes(data))
    with pytest.raises(ArtifactError):
        sign(folder, [keys])
    assert not (folder / RELEASE_FILENAME).exists()


def test_release_versions_are_integers(tmp_path: Path, model_file: Path) -> None:
    manifest = read_manifest(make_artifact(tmp_path / "a", model_file, version="1.2", smoke=False))
    with pytest.raises(SigningError, match="integer"):
        make_release(manifest)


def test_signing_bytes_are_canonical(tmp_path: Path, model_file: Path) -> None:
    keys = make_keys(tmp_path)
    manifest = read_manifest(make_artifact(tmp_path / "a", model_file, version="4", smoke=False))
    release = sign_release(make_release(manifest), [load_private_key(keys.private_path)])
    raw = json.loads(release.to_json())  # indented, sorted: other bytes, same data
    assert release_signing_bytes(raw["signed"]) == release_signing_bytes(release.signed)
    assert verify_signatures(raw, TrustedKeys.load([keys.public_base64]), 1) == 1


def test_smoke_test_carries_the_artifacts_own_answers(model_file: Path) -> None:
    from converters.runners import LiteRTRunner
    from converters.smoke import make_smoke_test

    runner = LiteRTRunner(model_file, threads=1)
    try:
        x = np.random.default_rng(3).random((5, 64), dtype=np.float32)
        smoke = make_smoke_test(runner, {"pixels": x}, precision="fp32")
        assert smoke is not None
        assert len(smoke.samples) == 2
        first = smoke.samples[0]
        assert first.inputs["pixels"].shape == [1, 64]
        expected = runner.run({"pixels": x[:1]})["output_0"]
        np.testing.assert_allclose(first.outputs["output_0"].data, expected.reshape(-1), rtol=1e-6)
        assert (smoke.atol, smoke.rtol) == (1e-3, 1e-3)
        too_big = {"pixels": np.zeros((1, 70_000), np.float32)}
        assert make_smoke_test(_Echo(), too_big, precision="fp32") is None
    finally:
        runner.close()


class _Echo:
    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(inputs)
