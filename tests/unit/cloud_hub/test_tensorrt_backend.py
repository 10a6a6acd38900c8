"""The TensorRT backend and its pycuda plumbing.

The first part runs everywhere: the pure pieces (datatype map, profile checks, instance plan),
the clear errors without TensorRT, pycuda or a GPU, and the backend's wiring driven through
stand-ins for ``tensorrt`` and ``pycuda.driver`` that keep "device" memory in host bytes.
Tests marked ``gpu`` need an NVIDIA GPU and skip without one: the pycuda ones need pycuda only;
the TensorRT ones build a small engine from an ONNX model and compare it with ONNX Runtime.
"""

from __future__ import annotations

import enum
import functools
import importlib
import itertools
import sys
import threading
import types
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import pytest

from cloud_hub.backends import _cuda
from cloud_hub.backends.base import Backend, BackendOptions, load_backend_class
from cloud_hub.backends.tensorrt import (
    TRT_DATATYPES,
    ShapeRange,
    TensorRTBackend,
    assign_profiles,
    check_input_shape,
    datatype_of_trt,
)
from cloud_hub.errors import (
    BackendUnavailableError,
    BadRequestError,
    ConfigError,
    InferenceError,
    ModelLoadError,
)
from protocols import Datatype

# -- importing and loading without TensorRT, pycuda or a GPU ----------------------------------


@pytest.fixture
def no_gpu_stack(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``import tensorrt`` and ``import pycuda`` fail, as on a machine without them."""
    for name in ("tensorrt", "pycuda", "pycuda.driver"):
        monkeypatch.setitem(sys.modules, name, None)


def test_module_imports_without_tensorrt_or_pycuda(
    no_gpu_stack: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delitem(sys.modules, "cloud_hub.backends.tensorrt", raising=False)
    monkeypatch.delitem(sys.modules, "cloud_hub.backends._cuda", raising=False)
    module = importlib.import_module("cloud_hub.backends.tensorrt")
    assert module.TensorRTBackend.load
    assert sys.modules["tensorrt"] is None
    assert sys.modules["pycuda"] is None


def test_load_without_tensorrt_says_what_to_install(no_gpu_stack: None, tmp_path: Path) -> None:
    plan = tmp_path / "model.plan"
    plan.write_bytes(b"not used")
    with pytest.raises(BackendUnavailableError) as caught:
        load_backend_class("tensorrt").load(plan, BackendOptions())
    message = str(caught.value)
    assert message == (
        "TensorRT is not installed: install hybrid-inference[gpu] on a machine with an NVIDIA GPU"
    )
    assert "\n" not in message


def test_load_without_pycuda_says_so(
    no_gpu_stack: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", types.ModuleType("tensorrt"))
    plan = tmp_path / "model.plan"
    plan.write_bytes(b"not used")
    with pytest.raises(BackendUnavailableError, match=r"^pycuda is not installed: install"):
        TensorRTBackend.load(plan, BackendOptions())


def test_cpu_device_is_refused_before_anything_is_imported(no_gpu_stack: None) -> None:
    with pytest.raises(BackendUnavailableError, match="only on an NVIDIA GPU"):
        TensorRTBackend.load(Path("model.plan"), BackendOptions(device="cpu"))


@pytest.mark.parametrize(
    "parameters",
    [{"device_id": "first"}, {"device_id": -1}, {"optimization_profile": 1.5}, {"device_id": True}],
)
def test_bad_parameters_are_config_errors(no_gpu_stack: None, parameters: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match="parameters"):
        TensorRTBackend.load(Path("model.plan"), BackendOptions(parameters=parameters))


def _fake_driver(*, count: int = 1, init_error: str | None = None) -> Any:
    driver: Any = types.ModuleType("pycuda.driver")
    error = type("Error", (Exception,), {})

    def init() -> None:
        if init_error is not None:
            raise error(init_error)

    driver.Error = error
    driver.init = init
    driver.Device = types.SimpleNamespace(count=lambda: count)
    return driver


def _install_driver(monkeypatch: pytest.MonkeyPatch, driver: types.ModuleType) -> None:
    package: Any = types.ModuleType("pycuda")
    package.driver = driver
    monkeypatch.setitem(sys.modules, "pycuda", package)
    monkeypatch.setitem(sys.modules, "pycuda.driver", driver)


@pytest.mark.parametrize(
    ("driver", "ordinal", "message"),
    [
        (
            _fake_driver(init_error="cuInit failed: no CUDA-capable device is detected"),
            0,
            r"^no CUDA device found \(CUDA driver: cuInit failed",
        ),
        (_fake_driver(count=0), 0, r"^no CUDA device found$"),
        (_fake_driver(count=2), 2, r"^CUDA device 2 not found: this machine has 2 \(0 to 1\)$"),
    ],
)
def test_missing_gpu_is_one_clear_line(
    monkeypatch: pytest.MonkeyPatch, driver: types.ModuleType, ordinal: int, message: str
) -> None:
    _install_driver(monkeypatch, driver)
    with pytest.raises(BackendUnavailableError, match=message):
        _cuda.CudaDevice.open(ordinal)


# -- pure pieces -------------------------------------------------------------------------------


class FakeDataType(enum.Enum):
    """Member names as ``tensorrt.DataType`` spells them."""

    FLOAT = 0
    HALF = 1
    INT8 = 2
    INT32 = 3
    BOOL = 4
    UINT8 = 5
    FP8 = 6
    BF16 = 7
    INT64 = 8
    INT4 = 9
    FP4 = 10


@pytest.mark.parametrize(
    ("trt_name", "datatype"),
    [
        ("FLOAT", Datatype.FP32),
        ("HALF", Datatype.FP16),
        ("BF16", Datatype.BF16),
        ("INT8", Datatype.INT8),
        ("INT32", Datatype.INT32),
        ("INT64", Datatype.INT64),
        ("BOOL", Datatype.BOOL),
        ("UINT8", Datatype.UINT8),
    ],
)
def test_datatype_map(trt_name: str, datatype: Datatype) -> None:
    assert datatype_of_trt("x", FakeDataType[trt_name]) is datatype
    assert TRT_DATATYPES[trt_name] is datatype


def test_datatype_map_reads_the_name_from_str_too() -> None:
    class Opaque:
        def __str__(self) -> str:
            return "DataType.HALF"

    assert datatype_of_trt("x", Opaque()) is Datatype.FP16


@pytest.mark.parametrize("trt_name", ["FP8", "INT4", "FP4"])
def test_unservable_datatypes_name_the_tensor(trt_name: str) -> None:
    with pytest.raises(ModelLoadError, match=rf"tensor 'logits' has TensorRT type {trt_name}"):
        datatype_of_trt("logits", FakeDataType[trt_name])


BATCH_1_TO_8 = ShapeRange(min=(1, 4), opt=(4, 4), max=(8, 4))


@pytest.mark.parametrize("shape", [(1, 4), (5, 4), (8, 4)])
def test_shapes_inside_the_profile_pass(shape: tuple[int, ...]) -> None:
    check_input_shape("x", shape, BATCH_1_TO_8)


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ((9, 4), r"dimension 0 is 9 and must lie between 1 and 8"),
        ((0, 4), r"dimension 0 is 0 and must lie between 1 and 8"),
        ((2, 5), r"dimension 1 is 5 and must be 4"),
        ((2, 4, 1), r"takes 2 dimensions, not 3"),
        ((4,), r"takes 2 dimensions, not 1"),
    ],
)
def test_shapes_outside_the_profile_are_bad_requests(shape: tuple[int, ...], message: str) -> None:
    with pytest.raises(BadRequestError, match=message) as caught:
        check_input_shape("x", shape, BATCH_1_TO_8)
    assert caught.value.status == 400
    assert "'x'" in str(caught.value)


def test_fixed_range() -> None:
    fixed = ShapeRange.fixed((2, 3))
    assert fixed.bounds == ((2, 3), (2, 3))
    check_input_shape("x", (2, 3), fixed)
    with pytest.raises(BadRequestError):
        check_input_shape("x", (1, 3), fixed)


WIDE = {"x": ShapeRange(min=(1, 4), opt=(8, 4), max=(32, 4))}
WIDE_OTHER_OPT = {"x": ShapeRange(min=(1, 4), opt=(2, 4), max=(32, 4))}
NARROW = {"x": ShapeRange(min=(1, 4), opt=(1, 4), max=(4, 4))}


def test_static_engines_share_one_engine_and_profile() -> None:
    assert assign_profiles(3, 0, [NARROW], dynamic=False) == [(0, 0)] * 3


def test_one_dynamic_profile_gives_each_instance_its_own_engine() -> None:
    assert assign_profiles(3, 0, [WIDE], dynamic=True) == [(0, 0), (1, 0), (2, 0)]


def test_profiles_with_equal_ranges_are_shared_out_before_copying_the_engine() -> None:
    ranges = [WIDE, NARROW, WIDE_OTHER_OPT]
    assert assign_profiles(3, 0, ranges, dynamic=True) == [(0, 0), (0, 2), (1, 0)]
    assert assign_profiles(2, 2, ranges, dynamic=True) == [(0, 2), (0, 0)]
    assert assign_profiles(2, 1, ranges, dynamic=True) == [(0, 1), (1, 1)]


@pytest.mark.parametrize(("count", "profile"), [(0, 0), (1, 3)])
def test_bad_instance_plans_are_config_errors(count: int, profile: int) -> None:
    with pytest.raises(ConfigError):
        assign_profiles(count, profile, [WIDE], dynamic=True)


def test_buffers_grow_in_powers_of_two_and_never_shrink() -> None:
    assert _cuda.grown_capacity(0, 1) == 256
    assert _cuda.grown_capacity(0, 256) == 256
    assert _cuda.grown_capacity(256, 257) == 512
    assert _cuda.grown_capacity(512, 100) == 512
    assert _cuda.grown_capacity(512, 5000) == 8192


# -- the backend's wiring, on stand-ins for tensorrt and pycuda.driver -------------------------


class _Memory:
    """Fake device memory: address -> bytearray."""

    def __init__(self) -> None:
        self.blocks: dict[int, bytearray] = {}
        self.addresses = itertools.count(0x1000, 0x100000)
        self.live = 0

    def view(self, address: int, nbytes: int) -> memoryview:
        return memoryview(self.blocks[address])[:nbytes]


class _Allocation:
    def __init__(self, memory: _Memory, nbytes: int) -> None:
        self.memory = memory
        self.address = next(memory.addresses)
        memory.blocks[self.address] = bytearray(nbytes)
        memory.live += 1

    def __int__(self) -> int:
        return self.address

    def free(self) -> None:
        del self.memory.blocks[self.address]
        self.memory.live -= 1


class _Pinned(bytearray):
    freed = False

    def free(self) -> None:
        self.freed = True


def _simulated_driver(memory: _Memory) -> Any:
    driver = _fake_driver()
    context_stack = threading.local()

    class Context:
        def push(self) -> None:
            context_stack.depth = getattr(context_stack, "depth", 0) + 1

        @staticmethod
        def pop() -> None:
            context_stack.depth -= 1

    class Device:
        @staticmethod
        def count() -> int:
            return 1

        def __init__(self, ordinal: int) -> None:
            self.ordinal = ordinal

        def name(self) -> str:
            return "Simulated GPU"

        def retain_primary_context(self) -> Context:
            return Context()

    class Stream:
        handles = itertools.count(1)

        def __init__(self) -> None:
            self.handle = next(self.handles)

        def synchronize(self) -> None:
            assert context_stack.depth > 0, "CUDA work outside an active context"

    def mem_alloc(nbytes: int) -> _Allocation:
        assert context_stack.depth > 0, "allocation outside an active context"
        return _Allocation(memory, nbytes)

    def pagelocked_empty(count: int, dtype: Any) -> Any:
        # Like pycuda's, the array's base is the allocation, which has free().
        return np.ndarray((count,), dtype, buffer=_Pinned(count * np.dtype(dtype).itemsize))

    def memcpy_htod_async(dest: _Allocation, src: np.ndarray[Any, Any], stream: Stream) -> None:
        memory.view(int(dest), src.nbytes)[:] = src.tobytes()

    def memcpy_dtoh_async(dest: np.ndarray[Any, Any], src: _Allocation, stream: Stream) -> None:
        dest[...] = np.frombuffer(memory.view(int(src), dest.nbytes), dtype=dest.dtype)

    def memcpy_dtod_async(dest: int, src: int, size: int, stream: Stream) -> None:
        memory.view(int(dest), size)[:] = memory.view(int(src), size)

    driver.Context = Context
    driver.Device = Device
    driver.Stream = Stream
    driver.mem_alloc = mem_alloc
    driver.pagelocked_empty = pagelocked_empty
    driver.memcpy_htod_async = memcpy_htod_async
    driver.memcpy_dtoh_async = memcpy_dtoh_async
    driver.memcpy_dtod_async = memcpy_dtod_async
    return driver


class FakeTensorIOMode(enum.Enum):
    NONE = 0
    INPUT = 1
    OUTPUT = 2


class FakeTensorFormat(enum.Enum):
    LINEAR = 0
    CHW32 = 1


class FakeSeverity(enum.Enum):
    INTERNAL_ERROR = 0
    ERROR = 1
    WARNING = 2
    INFO = 3
    VERBOSE = 4


PLAN = b"simulated plan: y = 2x + 1, x float32 [-1, 4], batch 1 to 8"


# A stand-in engine's work: (x address, y address, element count, CUDA stream handle) -> None.
Kernel = Callable[[int, int, int, int], None]


def _simulated_tensorrt(
    memory: _Memory, *, dtype: str = "FLOAT", kernel: Kernel | None = None
) -> Any:
    """A ``tensorrt`` module whose engine computes y = 2x + 1, in ``memory`` or with ``kernel``."""
    trt: Any = types.ModuleType("tensorrt")
    trt.__version__ = "10.simulated"
    trt.DataType = FakeDataType
    trt.TensorIOMode = FakeTensorIOMode
    trt.TensorFormat = FakeTensorFormat
    severity = FakeSeverity
    trt.stats = types.SimpleNamespace(engines=0, contexts=[])

    class ILogger:
        Severity = severity

        def __init__(self) -> None:
            pass

    class Context:
        def __init__(self) -> None:
            self.shapes: dict[str, tuple[int, ...]] = {}
            self.addresses: dict[str, int] = {}
            self.profile = 0
            self.running = threading.Lock()

        def set_optimization_profile_async(self, profile: int, stream: int) -> bool:
            self.profile = profile
            return True

        def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
            self.shapes[name] = tuple(shape)
            return 1 <= shape[0] <= 8

        def get_tensor_shape(self, name: str) -> tuple[int, ...]:
            return self.shapes["x"]

        def set_tensor_address(self, name: str, address: int) -> bool:
            self.addresses[name] = address
            return True

        def execute_async_v3(self, stream: int) -> bool:
            assert self.running.acquire(blocking=False), "one context used by two threads"
            try:
                count = int(np.prod(self.shapes["x"]))
                if kernel is not None:
                    kernel(self.addresses["x"], self.addresses["y"], count, stream)
                    return True
                nbytes = count * 4
                x = np.frombuffer(memory.view(self.addresses["x"], nbytes), np.float32)
                y = np.frombuffer(memory.view(self.addresses["y"], nbytes), np.float32)
                y[...] = 2 * x + 1
            finally:
                self.running.release()
            return True

    class Engine:
        num_io_tensors = 2
        num_optimization_profiles = 1

        def get_tensor_name(self, index: int) -> str:
            return ["x", "y"][index]

        def get_tensor_mode(self, name: str) -> Any:
            return trt.TensorIOMode.INPUT if name == "x" else trt.TensorIOMode.OUTPUT

        def get_tensor_dtype(self, name: str) -> Any:
            return FakeDataType[dtype]

        def get_tensor_shape(self, name: str) -> tuple[int, ...]:
            return (-1, 4)

        def get_tensor_format(self, name: str) -> Any:
            return trt.TensorFormat.LINEAR

        def is_shape_inference_io(self, name: str) -> bool:
            return False

        def get_tensor_profile_shape(self, name: str, profile: int) -> list[tuple[int, ...]]:
            return [(1, 4), (4, 4), (8, 4)]

        def create_execution_context(self) -> Context:
            context = Context()
            trt.stats.contexts.append(context)
            return context

    class Runtime:
        def __init__(self, logger: Any) -> None:
            self.logger = logger

        def deserialize_cuda_engine(self, plan: bytes) -> Engine | None:
            if plan != PLAN:
                self.logger.log(severity.ERROR, "magic tag does not match")
                return None
            trt.stats.engines += 1
            return Engine()

    trt.ILogger = ILogger
    trt.Runtime = Runtime
    return trt


@pytest.fixture
def simulated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> tuple[Any, _Memory, Path]:
    memory = _Memory()
    trt = _simulated_tensorrt(memory)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    _install_driver(monkeypatch, _simulated_driver(memory))
    plan = tmp_path / "model.plan"
    plan.write_bytes(PLAN)
    return trt, memory, plan


def test_simulated_engine_round_trip(simulated: tuple[Any, _Memory, Path]) -> None:
    trt, memory, plan = simulated
    backend = TensorRTBackend.load(plan, BackendOptions(instance_count=2))
    assert backend.name == "tensorrt:Simulated GPU"
    assert [(s.name, s.datatype, s.shape) for s in backend.inputs] == [
        ("x", Datatype.FP32, (-1, 4))
    ]
    assert [(s.name, s.datatype, s.shape) for s in backend.outputs] == [
        ("y", Datatype.FP32, (-1, 4))
    ]
    assert trt.stats.engines == 2, "one profile, two instances: an engine copy each"
    first = backend.infer({"x": np.zeros((1, 4), np.float32)})["y"]
    for batch in (1, 3, 8, 2):
        x = np.arange(batch * 4, dtype=np.float32).reshape(batch, 4)
        out = backend.infer({"x": x})
        np.testing.assert_array_equal(out["y"], 2 * x + 1)
    np.testing.assert_array_equal(first, np.ones((1, 4)), err_msg="results share no staging")
    backend.close()
    assert memory.live == 0, "close frees every device buffer"


def test_simulated_buffers_round_trip(simulated: tuple[Any, _Memory, Path]) -> None:
    """The GPU round-trip test's own logic, on simulated memory."""
    _, memory, _ = simulated
    assert _round_trips(_cuda.CudaDevice.open(0), seed=3) == 6 * len(ROUND_TRIP_DTYPES)
    assert memory.live == 0


def test_one_device_object_per_gpu(simulated: tuple[Any, _Memory, Path]) -> None:
    assert _cuda.CudaDevice.open(0) is _cuda.CudaDevice.open(0)


def test_simulated_engine_from_several_threads(simulated: tuple[Any, _Memory, Path]) -> None:
    _, _, plan = simulated
    backend = TensorRTBackend.load(plan, BackendOptions(instance_count=3))
    rng = np.random.default_rng(0)
    batches = [
        rng.standard_normal((int(rng.integers(1, 9)), 4)).astype(np.float32) for _ in range(60)
    ]

    def run(x: np.ndarray[Any, Any]) -> bool:
        return bool(np.array_equal(backend.infer({"x": x})["y"], 2 * x + 1))

    with ThreadPoolExecutor(max_workers=6) as pool:
        assert all(pool.map(run, batches))
    backend.close()


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({"x": np.zeros((9, 4), np.float32)}, r"dimension 0 is 9 and must lie between 1 and 8"),
        ({"x": np.zeros((2, 4), np.float64)}, r"holds float64; the model takes FP32"),
        ({}, r"input 'x' is missing"),
        ({"x": np.zeros((2, 4), np.float32), "z": np.zeros(1)}, r"unknown input\(s\) 'z'"),
    ],
)
def test_simulated_engine_refuses_bad_requests(
    simulated: tuple[Any, _Memory, Path], inputs: dict[str, Any], message: str
) -> None:
    _, _, plan = simulated
    backend = TensorRTBackend.load(plan, BackendOptions())
    with pytest.raises(BadRequestError, match=message):
        backend.infer(inputs)
    np.testing.assert_array_equal(backend.infer({"x": np.ones((1, 4), np.float32)})["y"], 3)
    backend.close()


def test_simulated_engine_wraps_runtime_failures(simulated: tuple[Any, _Memory, Path]) -> None:
    trt, _, plan = simulated
    backend = TensorRTBackend.load(plan, BackendOptions())
    trt.stats.contexts[0].execute_async_v3 = lambda stream: False
    with pytest.raises(InferenceError, match="TensorRT could not run the batch"):
        backend.infer({"x": np.ones((1, 4), np.float32)})
    backend.close()
    with pytest.raises(InferenceError, match="closed"):
        backend.infer({"x": np.ones((1, 4), np.float32)})


def test_simulated_bad_plan_is_a_model_load_error(simulated: tuple[Any, _Memory, Path]) -> None:
    _, _, plan = simulated
    plan.write_bytes(b"a plan from another TensorRT")
    with pytest.raises(ModelLoadError, match=r"cannot deserialize it \(magic tag does not match\)"):
        TensorRTBackend.load(plan, BackendOptions())


def test_simulated_unservable_dtype_is_a_model_load_error(
    monkeypatch: pytest.MonkeyPatch, simulated: tuple[Any, _Memory, Path]
) -> None:
    _, memory, plan = simulated
    monkeypatch.setitem(sys.modules, "tensorrt", _simulated_tensorrt(memory, dtype="FP8"))
    with pytest.raises(ModelLoadError, match="tensor 'x' has TensorRT type FP8"):
        TensorRTBackend.load(plan, BackendOptions())


def test_missing_plan_is_a_model_load_error(
    simulated: tuple[Any, _Memory, Path], tmp_path: Path
) -> None:
    with pytest.raises(ModelLoadError, match="cannot read it"):
        TensorRTBackend.load(tmp_path / "absent.plan", BackendOptions())


# -- on a GPU ----------------------------------------------------------------------------------


@functools.cache
def cuda_unavailable() -> str | None:
    """Why pycuda cannot reach a GPU here, or None when it can."""
    try:
        import pycuda.driver as driver
    except ModuleNotFoundError as exc:
        return f"pycuda is not installed ({exc})"
    except ImportError as exc:
        return f"pycuda cannot load the CUDA driver ({exc})"
    try:
        driver.init()
        count = driver.Device.count()
    except Exception as exc:  # pycuda's own errors, or a broken driver install
        return f"CUDA is not usable: {exc}"
    return None if count else "no CUDA device"


@functools.cache
def tensorrt_unavailable() -> str | None:
    try:
        import tensorrt  # noqa: F401
    except (ImportError, OSError) as exc:
        return f"TensorRT is not installed ({exc})"
    return None


@pytest.fixture
def gpu() -> _cuda.CudaDevice:
    reason = cuda_unavailable()
    if reason is not None:
        pytest.skip(reason)
    return _cuda.CudaDevice.open(0)


@pytest.fixture
def trt(gpu: _cuda.CudaDevice) -> Any:
    reason = tensorrt_unavailable()
    if reason is not None:
        pytest.skip(reason)
    import tensorrt

    return tensorrt


ROUND_TRIP_DTYPES = [
    np.dtype(np.float32),
    np.dtype(np.float16),
    np.dtype(ml_dtypes.bfloat16),
    np.dtype(np.int8),
    np.dtype(np.int32),
    np.dtype(np.int64),
    np.dtype(np.uint8),
    np.dtype(np.bool_),
]


def _random(rng: np.random.Generator, shape: tuple[int, ...], dtype: np.dtype[Any]) -> Any:
    if dtype == np.bool_:
        return rng.integers(0, 2, shape).astype(bool)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return rng.integers(info.min, info.max, shape, dtype=dtype, endpoint=True)
    return rng.standard_normal(shape).astype(dtype)


def _round_trips(device: _cuda.CudaDevice, seed: int) -> int:
    """Upload, copy on the device, and download growing arrays of every dtype; the count."""
    rng = np.random.default_rng(seed)
    done = 0
    with device.activate():
        buffers = _cuda.StreamBuffers(device)
        try:
            for rows in (1, 3, 64, 1000, 70_000, 2):
                for dtype in ROUND_TRIP_DTYPES:
                    x = _random(rng, (rows, 5), dtype)
                    src = buffers.upload("in", x)
                    dst = buffers.reserve("out", x.nbytes)
                    device.driver.memcpy_dtod_async(dst, src, x.nbytes, stream=_stream_of(buffers))
                    buffers.download("out", x.shape, x.dtype)
                    buffers.download("in", x.shape, x.dtype)
                    out = buffers.finish()
                    assert out["out"].dtype == x.dtype
                    np.testing.assert_array_equal(out["out"], x)
                    np.testing.assert_array_equal(out["in"], x)
                    done += 1
            assert buffers.allocated_bytes >= 2 * 70_000 * 5 * 8
        finally:
            buffers.close()
    return done


def _stream_of(buffers: _cuda.StreamBuffers) -> Any:
    return buffers._stream


@pytest.mark.gpu
def test_gpu_buffers_round_trip_growing_arrays(gpu: _cuda.CudaDevice) -> None:
    assert _round_trips(gpu, seed=0) == 6 * len(ROUND_TRIP_DTYPES)


@pytest.mark.gpu
def test_gpu_buffers_from_several_threads(gpu: _cuda.CudaDevice) -> None:
    with ThreadPoolExecutor(max_workers=4) as pool:
        counts = list(pool.map(lambda seed: _round_trips(gpu, seed), range(8)))
    assert counts == [6 * len(ROUND_TRIP_DTYPES)] * 8


@pytest.mark.gpu
def test_gpu_download_past_the_buffer_is_refused(gpu: _cuda.CudaDevice) -> None:
    with gpu.activate():
        buffers = _cuda.StreamBuffers(gpu)
        try:
            buffers.upload("x", np.zeros(10, np.float32))
            with pytest.raises(ValueError, match="fewer than"):
                buffers.download("x", (1000,), np.dtype(np.float32))
        finally:
            buffers.close()


def _cupy_kernel() -> Kernel:
    """y = 2x + 1 as a CUDA kernel (through CuPy) on the caller's stream and device buffers."""
    cupy = pytest.importorskip("cupy")
    twice_plus_one = cupy.ElementwiseKernel(
        "float32 x", "float32 y", "y = 2 * x + 1", "twice_plus_one"
    )

    def view(address: int, count: int) -> Any:
        memory = cupy.cuda.UnownedMemory(address, count * 4, None, 0)
        return cupy.ndarray((count,), cupy.float32, cupy.cuda.MemoryPointer(memory, 0))

    def kernel(x_address: int, y_address: int, count: int, stream: int) -> None:
        with cupy.cuda.ExternalStream(stream):
            twice_plus_one(view(x_address, count), view(y_address, count))

    return kernel


@pytest.mark.gpu
def test_gpu_backend_around_a_cuda_kernel(
    gpu: _cuda.CudaDevice, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The backend's own CUDA side on a real GPU, with TensorRT's engine stood in for.

    Where TensorRT cannot be installed, the engine is a CUDA kernel that reads and writes the
    device buffers the backend bound, on the stream it passed: pinned staging, asynchronous
    copies, stream order, the context on each worker thread and per-instance buffers all run
    for real, and a result read before the kernel finished would show.
    """
    kernel = _cupy_kernel()
    monkeypatch.setitem(sys.modules, "tensorrt", _simulated_tensorrt(_Memory(), kernel=kernel))
    plan = tmp_path / "model.plan"
    plan.write_bytes(PLAN)
    backend = TensorRTBackend.load(plan, BackendOptions(instance_count=3))
    assert backend.name == f"tensorrt:{gpu.name}"
    _serve_many_batches_then_close(backend)


def _serve_many_batches_then_close(backend: Backend) -> None:
    """300 batches of 1 to 8 rows, from one thread then six, a refusal, and a closed backend."""
    try:
        rng = np.random.default_rng(5)
        batches = [
            rng.standard_normal((int(rng.integers(1, 9)), 4)).astype(np.float32) for _ in range(300)
        ]

        def run(x: np.ndarray[Any, Any]) -> bool:
            y = backend.infer({"x": x})["y"]
            return y.shape == x.shape and bool(np.array_equal(y, 2 * x + 1))

        assert all(run(x) for x in batches[:20])
        with ThreadPoolExecutor(max_workers=6) as pool:
            assert all(pool.map(run, batches))
        with pytest.raises(BadRequestError, match="must lie between 1 and 8"):
            backend.infer({"x": np.zeros((9, 4), np.float32)})
        assert run(batches[0])
    finally:
        backend.close()
    with pytest.raises(InferenceError, match="closed"):
        backend.infer({"x": np.ones((1, 4), np.float32)})


def test_simulated_engine_calls_its_kernel_with_the_bound_buffers(
    monkeypatch: pytest.MonkeyPatch, simulated: tuple[Any, _Memory, Path]
) -> None:
    """The GPU test's stand-in engine and checks, on simulated memory."""
    _, memory, plan = simulated
    streams: set[int] = set()

    def kernel(x_address: int, y_address: int, count: int, stream: int) -> None:
        streams.add(stream)
        x = np.frombuffer(memory.view(x_address, count * 4), np.float32)
        np.frombuffer(memory.view(y_address, count * 4), np.float32)[...] = 2 * x + 1

    monkeypatch.setitem(sys.modules, "tensorrt", _simulated_tensorrt(memory, kernel=kernel))
    _serve_many_batches_then_close(TensorRTBackend.load(plan, BackendOptions(instance_count=3)))
    assert len(streams) == 3, "each instance runs on its own stream"
    assert memory.live == 0


def _tiny_onnx(path: Path) -> None:
    """y = relu(x @ w + b), x float32 [batch, 4], y float32 [batch, 3]."""
    from onnx import TensorProto, helper, numpy_helper, save

    rng = np.random.default_rng(7)
    w = rng.standard_normal((4, 3)).astype(np.float32)
    b = rng.standard_normal(3).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w"], ["h"]),
            helper.make_node("Add", ["h", "b"], ["z"]),
            helper.make_node("Relu", ["z"], ["y"]),
        ],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
        initializer=[numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    save(model, str(path))


def _build_plan(trt: Any, onnx_path: Path, plan_path: Path) -> None:
    """Serialize a TensorRT engine for the ONNX model: one profile, batch 1 to 8."""
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        pytest.fail(f"TensorRT cannot parse the ONNX model: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, 1 << 28)
    profile = builder.create_optimization_profile()
    profile.set_shape("x", (1, 4), (4, 4), (8, 4))
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    assert serialized is not None, "TensorRT could not build the engine"
    plan_path.write_bytes(bytes(serialized))


@pytest.fixture
def tiny_plan(trt: Any, tmp_path: Path) -> tuple[Path, Path]:
    onnx_path = tmp_path / "model.onnx"
    plan_path = tmp_path / "model.plan"
    _tiny_onnx(onnx_path)
    _build_plan(trt, onnx_path, plan_path)
    return onnx_path, plan_path


@pytest.mark.gpu
def test_tensorrt_matches_onnxruntime(tiny_plan: tuple[Path, Path]) -> None:
    ort = pytest.importorskip("onnxruntime")
    onnx_path, plan_path = tiny_plan
    reference = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    backend = load_backend_class("tensorrt").load(plan_path, BackendOptions(instance_count=2))
    try:
        assert [(s.name, s.datatype, s.shape) for s in backend.inputs] == [
            ("x", Datatype.FP32, (-1, 4))
        ]
        assert [(s.name, s.datatype, s.shape) for s in backend.outputs] == [
            ("y", Datatype.FP32, (-1, 3))
        ]
        rng = np.random.default_rng(1)

        def check(batch: int) -> None:
            x = rng.standard_normal((batch, 4)).astype(np.float32)
            (expected,) = reference.run(["y"], {"x": x})
            got = backend.infer({"x": x})["y"]
            assert got.shape == (batch, 3)
            np.testing.assert_allclose(got, expected, rtol=1e-2, atol=1e-2)

        for batch in (1, 5, 8, 2):
            check(batch)
        with ThreadPoolExecutor(max_workers=2) as pool:
            list(pool.map(check, [int(b) for b in rng.integers(1, 9, 40)]))
        for batch in (0, 9):
            with pytest.raises(BadRequestError, match="outside the shapes"):
                backend.infer({"x": np.zeros((batch, 4), np.float32)})
        check(3)
    finally:
        backend.close()


@pytest.mark.gpu
def test_tensorrt_refuses_a_corrupt_plan(trt: Any, tmp_path: Path) -> None:
    plan = tmp_path / "model.plan"
    plan.write_bytes(b"\x00" * 1024)
    with pytest.raises(ModelLoadError, match="cannot deserialize it"):
        TensorRTBackend.load(plan, BackendOptions())
