"""Source models: ``.keras`` files, SavedModel folders and ``.onnx`` files, or an archive
(``.zip``, ``.tar``, ``.tar.gz``, ``.tgz``) holding one of them. PyTorch models arrive as ONNX
(``torch.onnx.export``); PyTorch files themselves (``.pt2`` exported programs, ``.pt``/``.pth``
checkpoints) are refused with a message naming that route.

A :class:`Source` knows its inputs and outputs, runs itself as the reference the artifacts are
validated against, and, for TensorFlow sources, gives the serving function every TensorFlow
target is converted from, so TFLite and ONNX artifacts of one source take and give the same
tensor names (``pixels`` in, ``output_0`` out for a Keras model).
"""

from __future__ import annotations

import abc
import hashlib
import importlib
import logging
import shutil
import tarfile
import tempfile
import zipfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path, PurePosixPath
from types import TracebackType
from typing import Any

import numpy as np

from protocols import SourceFormat

from ._libs import import_onnx, import_onnxruntime, import_tensorflow, quiet_stdout
from .errors import ConversionError, SourceError
from .tensors import TensorSpec, guess_layout, inverse_permutation, permute_shape

__all__ = [
    "ARCHIVE_SUFFIXES",
    "MODEL_SUFFIXES",
    "KerasSource",
    "OnnxSource",
    "SavedModelSource",
    "Source",
    "TensorFlowSource",
    "extract_archive",
    "file_sha256",
    "find_model",
    "open_source",
    "tree_sha256",
]

logger = logging.getLogger(__name__)

MODEL_SUFFIXES: dict[str, SourceFormat] = {".keras": "keras", ".h5": "keras", ".onnx": "onnx"}
ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz")
PYTORCH_SUFFIXES = (".pt2", ".pt", ".pth")
"""PyTorch files, which are not sources: PyTorch models arrive as ONNX (``torch.onnx.export``)."""
ARCHIVE_MAX_BYTES = 8 << 30
"""Largest total an archive may unpack to."""
ARCHIVE_MAX_MEMBERS = 100_000
REFERENCE_BATCH = 64

Arrays = dict[str, np.ndarray[Any, Any]]


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def tree_sha256(folder: Path) -> str:
    """A folder's digest: sha256 over ``<relative path>\\0<file sha256>\\n`` of every file, in
    sorted order, so it does not depend on timestamps or the order files were written."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        relative = path.relative_to(folder).as_posix()
        digest.update(f"{relative}\0{file_sha256(path)}\n".encode())
    return digest.hexdigest()


def _archive_kind(path: Path) -> str | None:
    name = path.name.lower()
    for suffix in ARCHIVE_SUFFIXES:
        if name.endswith(suffix):
            return "zip" if suffix == ".zip" else "tar"
    return None


def _safe_member(name: str, archive: Path) -> PurePosixPath:
    member = PurePosixPath(name)
    if member.is_absolute() or ".." in member.parts or name.startswith(("/", "\\")):
        raise SourceError(f"{archive.name}: member {name!r} would land outside the folder")
    return member


def extract_archive(
    archive: Path,
    dest: Path,
    *,
    max_bytes: int = ARCHIVE_MAX_BYTES,
    max_members: int = ARCHIVE_MAX_MEMBERS,
) -> None:
    """Unpack a zip or tar archive into ``dest``, refusing links, devices, absolute paths,
    ``..``, and archives that unpack to more than ``max_bytes`` or ``max_members``."""
    kind = _archive_kind(archive)
    try:
        if kind == "zip":
            with zipfile.ZipFile(archive) as bundle:
                infos = bundle.infolist()
                _check_totals(
                    archive, len(infos), sum(i.file_size for i in infos), max_bytes, max_members
                )
                for info in infos:
                    member = _safe_member(info.filename, archive)
                    if (info.external_attr >> 16) & 0o170000 == 0o120000:
                        raise SourceError(f"{archive.name}: member {info.filename!r} is a link")
                    target = dest.joinpath(*member.parts)
                    if info.is_dir():
                        target.mkdir(parents=True, exist_ok=True)
                        continue
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with bundle.open(info) as src, target.open("wb") as out:
                        shutil.copyfileobj(src, out)
        elif kind == "tar":
            with tarfile.open(archive) as bundle:
                members = bundle.getmembers()
                _check_totals(
                    archive, len(members), sum(m.size for m in members), max_bytes, max_members
                )
                for tar_member in members:
                    member = _safe_member(tar_member.name, archive)
                    if not (tar_member.isfile() or tar_member.isdir()):
                        raise SourceError(
                            f"{archive.name}: member {tar_member.name!r} is not a plain file or folder"
                        )
                    target = dest.joinpath(*member.parts)
                    if tar_member.isdir():
                        target.mkdir(parents=True, exist_ok=True)
                        continue
                    target.parent.mkdir(parents=True, exist_ok=True)
                    stream = bundle.extractfile(tar_member)
                    if stream is None:
                        raise SourceError(f"{archive.name}: cannot read member {tar_member.name!r}")
                    with stream, target.open("wb") as out:
                        shutil.copyfileobj(stream, out)
        else:
            raise SourceError(f"{archive.name} is not a zip or tar archive")
    except (zipfile.BadZipFile, tarfile.TarError, EOFError) as exc:
        raise SourceError(f"{archive.name} is not a readable archive: {exc}") from exc
    except OSError as exc:
        raise SourceError(f"{archive.name} cannot be unpacked: {exc}") from exc


def _check_totals(archive: Path, members: int, size: int, max_bytes: int, max_members: int) -> None:
    if members > max_members:
        raise SourceError(f"{archive.name} holds {members} members; the limit is {max_members}")
    if size > max_bytes:
        raise SourceError(f"{archive.name} unpacks to {size} bytes; the limit is {max_bytes}")


def find_model(root: Path, archive: Path) -> Path:
    candidates = [p for p in root.rglob("*") if p.is_file() and p.suffix in MODEL_SUFFIXES]
    candidates += [p.parent for p in root.rglob("saved_model.pb")]
    if not candidates:  # say why a PyTorch file is not taken
        candidates = [p for p in root.rglob("*") if p.suffix.lower() in PYTORCH_SUFFIXES][:1]
    if len(candidates) != 1:
        found = ", ".join(str(p.relative_to(root)) for p in candidates) or "none"
        raise SourceError(
            f"{archive.name} must hold exactly one model (.keras, .h5, .onnx file or SavedModel "
            f"folder); found: {found}"
        )
    return candidates[0]


class Source(abc.ABC):
    """A source model, open. Use as a context manager: archives unpack to a folder that
    :meth:`close` removes."""

    format: SourceFormat

    def __init__(self, path: Path, *, given: Path, sha256: str) -> None:
        self.path = path
        """The model file or folder (inside the unpacked archive when one was given)."""
        self.given = given
        """What the caller named: the model, or the archive holding it."""
        self.sha256 = sha256
        self.inputs: tuple[TensorSpec, ...] = ()
        self.outputs: tuple[TensorSpec, ...] = ()
        self._cleanup: list[Callable[[], None]] = []

    @property
    def filename(self) -> str:
        return self.given.name

    @abc.abstractmethod
    def _run_batch(self, inputs: Arrays) -> Arrays: ...

    def run(self, inputs: Mapping[str, np.ndarray[Any, Any]]) -> Arrays:
        """The source's outputs on ``inputs`` (named as :attr:`inputs`, in the source layout)."""
        count = len(next(iter(inputs.values())))
        parts: list[Arrays] = []
        try:
            for start in range(0, count, REFERENCE_BATCH):
                chunk = {k: v[start : start + REFERENCE_BATCH] for k, v in inputs.items()}
                parts.append(self._run_batch(chunk))
        except ConversionError:
            raise
        except Exception as exc:
            raise SourceError(f"{self.filename}: the source model failed to run: {exc}") from exc
        return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}

    def close(self) -> None:
        while self._cleanup:
            self._cleanup.pop()()

    def __enter__(self) -> Source:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def describe(self) -> str:
        ins = ", ".join(s.describe() for s in self.inputs)
        outs = ", ".join(s.describe() for s in self.outputs)
        return f"{self.filename} ({self.format}): inputs {ins}; outputs {outs}"


class TensorFlowSource(Source):
    """Keras and SavedModel sources: every target starts from :meth:`serving_function`."""

    def __init__(self, path: Path, *, given: Path, sha256: str) -> None:
        super().__init__(path, given=given, sha256=sha256)
        self._exports: dict[tuple[tuple[str, tuple[int, ...]], ...], Path] = {}

    @abc.abstractmethod
    def _call(self, tensors: dict[str, Any]) -> dict[str, Any]:
        """The model on TensorFlow tensors named as :attr:`inputs`; outputs named as
        :attr:`outputs`."""

    @abc.abstractmethod
    def _trackable(self) -> Any:
        """What a saved serving function must keep alive (the variables)."""

    def serving_function(self, perms: Mapping[str, Sequence[int]] | None = None) -> Any:
        """A ``tf.function`` with an input signature: the model, fed in the artifact's layout
        (``perms`` transposes the named 4-D inputs from the source's), giving a dict of outputs."""
        tf = import_tensorflow()
        perms = dict(perms or {})
        specs = []
        for spec in self.inputs:
            shape = (
                permute_shape(spec.shape, perms[spec.name]) if spec.name in perms else spec.shape
            )
            specs.append(
                tf.TensorSpec([None if d < 0 else d for d in shape], spec.dtype, name=spec.name)
            )
        inverse = {name: list(inverse_permutation(perm)) for name, perm in perms.items()}
        names = [spec.name for spec in self.inputs]

        def serve(*args: Any) -> dict[str, Any]:
            tensors = {
                name: tf.transpose(arg, inverse[name]) if name in inverse else arg
                for name, arg in zip(names, args, strict=True)
            }
            return self._call(tensors)

        return tf.function(serve, input_signature=specs)

    def saved_model(self, work_dir: Path, perms: Mapping[str, Sequence[int]] | None = None) -> Path:
        """A SavedModel of :meth:`serving_function` (signature ``serving_default``), written once
        per layout into ``work_dir``."""
        key = tuple(sorted((k, tuple(v)) for k, v in (perms or {}).items()))
        if key in self._exports:
            return self._exports[key]
        tf = import_tensorflow()
        folder = work_dir / f"saved_model_{len(self._exports)}"
        module = tf.Module()
        module.keep = self._trackable()
        module.serve = self.serving_function(perms)
        try:
            with quiet_stdout():
                tf.saved_model.save(
                    module,
                    str(folder),
                    signatures={"serving_default": module.serve.get_concrete_function()},
                )
        except Exception as exc:
            raise ConversionError(f"{self.filename}: cannot export a SavedModel: {exc}") from exc
        self._exports[key] = folder
        return folder


def _spec(name: str, dtype: Any, shape: Sequence[int | None] | None) -> TensorSpec:
    if shape is None:
        raise SourceError(f"tensor {name!r} has an unknown rank; the converter needs a fixed rank")
    dims = tuple(-1 if d is None else int(d) for d in shape)
    return TensorSpec(name=name, dtype=np.dtype(dtype).name, shape=dims, layout=guess_layout(dims))


class KerasSource(TensorFlowSource):
    format: SourceFormat = "keras"

    def __init__(self, path: Path, *, given: Path, sha256: str) -> None:
        super().__init__(path, given=given, sha256=sha256)
        if path.suffix == ".keras" and not zipfile.is_zipfile(path):
            raise SourceError(
                f"{given.name} is not a Keras archive (a .keras file is a zip); is it corrupt?"
            )
        import_tensorflow()
        try:
            keras = importlib.import_module("keras")
            with quiet_stdout():
                self.model = keras.models.load_model(str(path), compile=False)
        except Exception as exc:
            raise SourceError(f"{given.name} cannot be loaded as a Keras model: {exc}") from exc
        model_inputs = getattr(self.model, "inputs", None)
        model_outputs = getattr(self.model, "outputs", None)
        if not model_inputs or not model_outputs:
            raise SourceError(
                f"{given.name}: the Keras model has no defined inputs and outputs (a subclassed "
                "model that was never built?); save a functional model or export a SavedModel"
            )
        self.inputs = tuple(_spec(str(t.name), t.dtype, tuple(t.shape)) for t in model_inputs)
        self._output_names = [f"output_{i}" for i in range(len(model_outputs))]
        self.outputs = tuple(
            _spec(name, t.dtype, tuple(t.shape))
            for name, t in zip(self._output_names, model_outputs, strict=True)
        )

    def _trackable(self) -> Any:
        return [v.value for v in self.model.variables]

    def _call(self, tensors: dict[str, Any]) -> dict[str, Any]:
        ordered = [tensors[spec.name] for spec in self.inputs]
        result = self.model(ordered[0] if len(ordered) == 1 else ordered, training=False)
        if isinstance(result, dict):
            result = [result[k] for k in result]
        if not isinstance(result, (list, tuple)):
            result = [result]
        return dict(zip(self._output_names, result, strict=True))

    def _run_batch(self, inputs: Arrays) -> Arrays:
        tf = import_tensorflow()
        outputs = self._call({k: tf.constant(v) for k, v in inputs.items()})
        return {k: np.asarray(v) for k, v in outputs.items()}


class SavedModelSource(TensorFlowSource):
    format: SourceFormat = "saved_model"
    SIGNATURE = "serving_default"

    def __init__(self, path: Path, *, given: Path, sha256: str) -> None:
        super().__init__(path, given=given, sha256=sha256)
        tf = import_tensorflow()
        try:
            with quiet_stdout():
                self.loaded = tf.saved_model.load(str(path))
        except Exception as exc:
            raise SourceError(f"{given.name} cannot be loaded as a SavedModel: {exc}") from exc
        signatures = dict(self.loaded.signatures)
        if self.SIGNATURE in signatures:
            self.signature = signatures[self.SIGNATURE]
        elif len(signatures) == 1:
            self.signature = next(iter(signatures.values()))
        else:
            raise SourceError(
                f"{given.name}: the SavedModel has no {self.SIGNATURE!r} signature and not exactly "
                f"one other (it has: {', '.join(signatures) or 'none'})"
            )
        args, kwargs = self.signature.structured_input_signature
        if args:
            raise SourceError(f"{given.name}: the signature takes positional inputs; name them")
        self.inputs = tuple(
            _spec(
                name,
                spec.dtype.as_numpy_dtype,
                spec.shape.as_list() if spec.shape.rank is not None else None,
            )
            for name, spec in kwargs.items()
        )
        outputs = self.signature.structured_outputs
        if not isinstance(outputs, dict):
            raise SourceError(f"{given.name}: the signature's outputs are not named")
        self.outputs = tuple(
            _spec(
                name,
                spec.dtype.as_numpy_dtype,
                spec.shape.as_list() if spec.shape.rank is not None else None,
            )
            for name, spec in outputs.items()
        )

    def _trackable(self) -> Any:
        return self.loaded

    def _call(self, tensors: dict[str, Any]) -> dict[str, Any]:
        return dict(self.signature(**tensors))

    def _run_batch(self, inputs: Arrays) -> Arrays:
        tf = import_tensorflow()
        outputs = self._call({k: tf.constant(v) for k, v in inputs.items()})
        return {k: np.asarray(v) for k, v in outputs.items()}

    def saved_model(self, work_dir: Path, perms: Mapping[str, Sequence[int]] | None = None) -> Path:
        if not perms and self.signature is self.loaded.signatures.get(self.SIGNATURE):
            return self.path
        return super().saved_model(work_dir, perms)


class OnnxSource(Source):
    format: SourceFormat = "onnx"

    def __init__(self, path: Path, *, given: Path, sha256: str) -> None:
        super().__init__(path, given=given, sha256=sha256)
        onnx = import_onnx()
        try:
            self.model = onnx.load(str(path))
            onnx.checker.check_model(self.model)
        except Exception as exc:
            raise SourceError(f"{given.name} is not a valid ONNX model: {exc}") from exc
        graph = self.model.graph
        initializers = {i.name for i in graph.initializer}
        self.inputs = tuple(_onnx_spec(onnx, v) for v in graph.input if v.name not in initializers)
        self.outputs = tuple(_onnx_spec(onnx, v) for v in graph.output)
        self._session: Any = None
        self.saved_models: dict[Path, tuple[Path, dict[str, tuple[int, ...]], dict[str, str]]] = {}
        """TFLite targets' SavedModel made by onnx2tf, its input transposes and tool versions,
        per work folder: made once per build, whatever the number of TFLite profiles."""

    @property
    def opset(self) -> int:
        return next(
            (int(o.version) for o in self.model.opset_import if o.domain in ("", "ai.onnx")), 0
        )

    def _run_batch(self, inputs: Arrays) -> Arrays:
        if self._session is None:
            ort = import_onnxruntime()
            options = ort.SessionOptions()
            options.log_severity_level = 3
            self._session = ort.InferenceSession(
                self.model.SerializeToString(), options, providers=["CPUExecutionProvider"]
            )
        names = [o.name for o in self._session.get_outputs()]
        return dict(zip(names, self._session.run(names, inputs), strict=True))


def _onnx_spec(onnx: Any, value: Any) -> TensorSpec:
    tensor_type = value.type.tensor_type
    if not tensor_type.HasField("shape"):
        raise SourceError(f"ONNX tensor {value.name!r} has an unknown rank")
    dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor_type.shape.dim]
    dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)
    return _spec(value.name, dtype, dims)


def open_source(path: Path) -> Source:
    """Open a source model: a ``.keras``/``.h5``/``.onnx`` file, a SavedModel folder, or an
    archive holding one. Raises :class:`SourceError` with what is wrong."""
    if not path.exists():
        raise SourceError(f"source {path} does not exist")
    if path.is_file() and _archive_kind(path) is not None:
        sha256 = file_sha256(path)
        folder = Path(tempfile.mkdtemp(prefix="model-convert-source-"))
        try:
            extract_archive(path, folder)
            source = _open_model(find_model(folder, path), given=path, sha256=sha256)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        source._cleanup.append(lambda: shutil.rmtree(folder, ignore_errors=True))
        return source
    sha256 = tree_sha256(path) if path.is_dir() else file_sha256(path)
    return _open_model(path, given=path, sha256=sha256)


def _open_model(path: Path, *, given: Path, sha256: str) -> Source:
    if path.is_dir():
        if not (path / "saved_model.pb").is_file():
            raise SourceError(f"{given} is a folder but not a SavedModel (no saved_model.pb)")
        return SavedModelSource(path, given=given, sha256=sha256)
    kind = MODEL_SUFFIXES.get(path.suffix.lower())
    if kind == "keras":
        return KerasSource(path, given=given, sha256=sha256)
    if kind == "onnx":
        return OnnxSource(path, given=given, sha256=sha256)
    if path.suffix.lower() in PYTORCH_SUFFIXES:
        what = "an exported program" if path.suffix.lower() == ".pt2" else "a checkpoint"
        raise SourceError(
            f"{given.name} is a PyTorch file ({what}), which the converter does not read; "
            "export the model to ONNX (`torch.onnx.export(model, example_inputs, "
            "'model.onnx', dynamic_shapes=...)`) and convert the .onnx file"
        )
    raise SourceError(
        f"{given.name}: unknown kind of source; give a .keras, .h5 or .onnx file, a SavedModel "
        f"folder, or a {', '.join(ARCHIVE_SUFFIXES)} archive of one"
    )
