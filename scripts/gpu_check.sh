#!/usr/bin/env bash
# GPU tests of the TensorRT backend, on a machine with an NVIDIA GPU and no package index.
#
# It makes a virtual environment that sees the machine's own Python packages, installs only what
# is missing there from a folder of downloaded distributions (pycuda is built from its sdist
# against the local CUDA toolkit), and runs `pytest -m gpu` on the backend's tests. Tests that
# need TensorRT skip where TensorRT is not installed; the pycuda ones then still run, and so does
# the backend around a CUDA kernel standing in for the engine where CuPy is installed.
#
# Fill the folder beforehand, where PyPI is reachable (the wheels must match the GPU machine's
# Python; cp312 here):
#   d=.cache/gpu-wheels
#   pip download pycuda --no-binary pycuda --no-deps -d $d    # the sdist
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
#     --platform manylinux2014_x86_64 -d $d \
#     pytools platformdirs mako markupsafe siphash24 typing_extensions \
#     pydantic pydantic_core annotated-types typing-inspection
#
# Environment: OUT (logs; default .cache/gpu-check), GPU_WHEELS (the folder), PYTHON (default
# python3), GPU_CHECK_VENV (default /tmp/gpu-check-venv). Exit status: pytest's.
set -uo pipefail

cd "$(dirname "$0")/.." || exit 2
ROOT=$PWD
WHEELS=$(realpath "${GPU_WHEELS:-$ROOT/.cache/gpu-wheels}")
OUT=${OUT:-$ROOT/.cache/gpu-check}
PYTHON=${PYTHON:-python3}
VENV=${GPU_CHECK_VENV:-/tmp/gpu-check-venv}
TESTS=tests/unit/cloud_hub/test_tensorrt_backend.py
mkdir -p "$OUT"

section() { printf '\n== %s\n' "$*"; }

describe_machine() {
  section "machine"
  uname -m
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 ||
    echo "nvidia-smi: not available"
  NVCC=$(command -v nvcc || true)
  if [ -z "$NVCC" ]; then
    for candidate in /usr/local/cuda/bin/nvcc /usr/local/cuda-*/bin/nvcc; do
      if [ -x "$candidate" ]; then
        NVCC=$candidate
        break
      fi
    done
  fi
  if [ -n "$NVCC" ]; then
    echo "nvcc: $NVCC ($("$NVCC" --version | tail -n 1))"
  else
    echo "nvcc: not found"
  fi
  echo "python: $(command -v "$PYTHON") ($("$PYTHON" --version 2>&1))"
  echo "libcuda: $(ldconfig -p 2>/dev/null | grep -m 1 'libcuda.so.1 ' || echo 'not in the ldconfig cache')"
}

# The folder holding libcuda.so for the linker: the toolkit's stubs, or else a link to the driver.
find_libcuda_dir() {
  local cuda_root=$1 dir real
  for dir in "$cuda_root/lib64/stubs" "$cuda_root/lib/stubs" \
    "$cuda_root/targets/x86_64-linux/lib/stubs" "$cuda_root/lib64" "$cuda_root/lib"; do
    if [ -e "$dir/libcuda.so" ]; then
      echo "$dir"
      return 0
    fi
  done
  real=$(ldconfig -p 2>/dev/null | awk '/libcuda\.so\.1 / {print $NF; exit}')
  for candidate in "$real" /usr/local/nvidia/lib64/libcuda.so.1 /usr/lib/x86_64-linux-gnu/libcuda.so.1; do
    if [ -n "$candidate" ] && [ -e "$candidate" ]; then
      mkdir -p /tmp/cuda-link
      ln -sf "$candidate" /tmp/cuda-link/libcuda.so
      echo /tmp/cuda-link
      return 0
    fi
  done
  return 1
}

# The folder holding cuda.h.
find_cuda_include() {
  local cuda_root=$1 dir
  for dir in "$cuda_root/include" "$cuda_root/targets/x86_64-linux/include" \
    /usr/local/cuda/include /usr/include; do
    if [ -e "$dir/cuda.h" ]; then
      echo "$dir"
      return 0
    fi
  done
  return 1
}

make_venv() {
  section "virtual environment $VENV"
  rm -rf "$VENV"
  if ! "$PYTHON" -m venv --system-site-packages "$VENV" 2>/dev/null; then
    echo "venv with pip failed (no ensurepip?); making one without pip"
    rm -rf "$VENV"
    "$PYTHON" -m venv --system-site-packages --without-pip "$VENV" || return 1
  fi
  PY=$VENV/bin/python
  # --system-site-packages sees the base interpreter's packages only; when $PYTHON is itself a
  # virtual environment (as on the GPU machine), add its site-packages too.
  local site
  site=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  "$PYTHON" - "$site/parent-environment.pth" <<'EOF'
import site, sys
if sys.prefix != sys.base_prefix:
    with open(sys.argv[1], "w") as pth:
        for path in site.getsitepackages():
            pth.write(f"import site; site.addsitedir({path!r})\n")
        print("added the parent environment:", ", ".join(site.getsitepackages()))
EOF
  "$PY" -m pip --version || return 1
}

install_missing() {
  section "installed before (pip list: $OUT/pip-list.txt)"
  "$PY" -m pip list 2>/dev/null >"$OUT/pip-list.txt"
  grep -i -E '^(numpy|pydantic|pydantic.core|ml.dtypes|pyyaml|pytest|pycuda|pytools|mako|platformdirs|siphash24|typing.extensions|tensorrt|onnx|onnxruntime|setuptools|wheel) ' \
    "$OUT/pip-list.txt" || true
  section "installing what is missing from $WHEELS"
  # pip leaves alone every requirement already met, so only the missing ones come from the folder.
  "$PY" -m pip install --no-index --find-links "$WHEELS" --disable-pip-version-check \
    "numpy>=1.26" "pydantic>=2.7" "ml-dtypes>=0.4" "pyyaml>=6.0" "pytest>=8.0" \
    pytools platformdirs mako 2>&1 | grep -v '^Requirement already satisfied' || true
}

build_pycuda() {
  section "pycuda"
  if "$PY" -c 'import pycuda.driver' 2>/dev/null; then
    echo "already importable; not building it"
    return 0
  fi
  local sdists sdist cuda_root include_dir lib_dir src
  sdists=("$WHEELS"/pycuda-*.tar.gz)
  sdist=${sdists[0]}
  if [ ! -f "$sdist" ]; then
    echo "no pycuda sdist in $WHEELS; the GPU tests will skip"
    return 1
  fi
  if [ -z "${NVCC:-}" ]; then
    echo "no nvcc, so no CUDA toolkit to build pycuda against; the GPU tests will skip"
    return 1
  fi
  cuda_root=$(dirname "$(dirname "$(realpath "$NVCC")")")
  if ! include_dir=$(find_cuda_include "$cuda_root"); then
    echo "no cuda.h under $cuda_root; the GPU tests will skip"
    return 1
  fi
  if ! lib_dir=$(find_libcuda_dir "$cuda_root"); then
    echo "no libcuda.so to link pycuda against; the GPU tests will skip"
    return 1
  fi
  echo "building $(basename "$sdist") against $cuda_root (cuda.h in $include_dir, libcuda.so in $lib_dir; log: $OUT/pycuda-build.log)"
  src=$(mktemp -d)
  tar -xzf "$sdist" -C "$src"
  src=$(ls -d "$src"/pycuda-*)
  # Without a siteconf.py, pycuda's setup waits 10 s and guesses; curand and GL are not needed.
  cat >"$src/siteconf.py" <<EOF
CUDA_ROOT = '$cuda_root'
CUDA_INC_DIR = ['$include_dir']
CUDADRV_LIB_DIR = ['$lib_dir']
CUDA_ENABLE_CURAND = False
CUDA_ENABLE_GL = False
USE_SHIPPED_BOOST = True
EOF
  local started=$SECONDS
  if ! "$PY" -m pip install --no-index --find-links "$WHEELS" --no-build-isolation \
    --disable-pip-version-check "$src" >"$OUT/pycuda-build.log" 2>&1; then
    echo "pycuda did not build; the end of its log:"
    tail -n 30 "$OUT/pycuda-build.log"
    return 1
  fi
  echo "built and installed in $((SECONDS - started)) s"
  "$PY" - <<'EOF'
import pycuda
import pycuda.driver as cuda

cuda.init()
print(f"pycuda {pycuda.VERSION_TEXT} built for CUDA {cuda.get_version()}, "
      f"driver {cuda.get_driver_version()}, {cuda.Device.count()} device(s): "
      f"{cuda.Device(0).name() if cuda.Device.count() else '-'}")
EOF
}

install_project() {
  section "hybrid-inference"
  export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
  if "$PY" -m pip install --no-index --no-deps --no-build-isolation --disable-pip-version-check \
    -e "$ROOT" >"$OUT/project-install.log" 2>&1; then
    echo "installed editable"
  else
    echo "editable install failed (see project-install.log); importing it from $ROOT instead"
  fi
  "$PY" -c 'import cloud_hub.backends.tensorrt, protocols; print("imports fine")'
}

run_tests() {
  section "pytest -m gpu $TESTS"
  "$PY" -m pytest -m gpu "$TESTS" -v -rs -p no:cacheprovider -o faulthandler_timeout=120 \
    --junitxml="$OUT/junit-gpu.xml" 2>&1 | tee "$OUT/pytest-gpu.txt"
  local status=${PIPESTATUS[0]}
  section "the whole file (CPU tests too)"
  "$PY" -m pytest "$TESTS" -q -rs -p no:cacheprovider 2>&1 | tail -n 15
  return "$status"
}

main() {
  local started=$SECONDS
  describe_machine
  make_venv || {
    echo "cannot make a virtual environment with $PYTHON"
    return 2
  }
  install_missing
  build_pycuda
  install_project
  run_tests
  local status=$?
  section "done in $((SECONDS - started)) s; pytest -m gpu exit status $status"
  return "$status"
}

main 2>&1 | tee "$OUT/gpu_check.log"
exit "${PIPESTATUS[0]}"
