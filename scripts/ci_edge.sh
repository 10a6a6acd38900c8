#!/usr/bin/env bash
# The edge agent in a light install: its tests in a fresh venv with only the `edge` extra (no
# TensorFlow, FastAPI, ONNX Runtime or qiskit), first on ai-edge-litert, then once more on
# tflite-runtime with numpy < 2. Prints the venv's installed size and the agent's resident memory
# with MobileNetV2 fp16 loaded.
#
#   scripts/ci_edge.sh            (needs the main .venv, with TensorFlow, to build the test models)
#
# EDGE_VENV (default .cache/edge-venv) and HYBRID_TEST_MODELS (default .cache/test-models) move
# the venv and the model cache; MAIN_VENV (default .venv) is where TensorFlow is.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PYTHON=${PYTHON:-python3}
MAIN_VENV=${MAIN_VENV:-$ROOT/.venv}
EDGE_VENV=${EDGE_VENV:-$ROOT/.cache/edge-venv}
export HYBRID_TEST_MODELS=${HYBRID_TEST_MODELS:-$ROOT/.cache/test-models}
export CI=${CI:-true}  # a missing model cache fails the tests instead of skipping them
EDGE_TESTS=(tests/unit/edge_agent tests/integration/test_edge_agent.py)
FORBIDDEN=(tensorflow fastapi onnxruntime qiskit)
EPY="$EDGE_VENV/bin/python"

step() { printf '\n== %s\n' "$*"; }
pip_install() {  # pip, without the warnings about extra index folders this machine may lack
  "$EPY" -m pip "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
}

step "1/3 test models (built with TensorFlow from $MAIN_VENV, reused when cached)"
"$MAIN_VENV/bin/python" scripts/make_test_models.py "$HYBRID_TEST_MODELS" --mobilenet

check_light() {
  "$EPY" - "${FORBIDDEN[@]}" <<'PY'
import importlib.util, sys
present = [name for name in sys.argv[1:] if importlib.util.find_spec(name) is not None]
if present:
    sys.exit(f"the edge venv must not hold {', '.join(present)}")
print("not installed here:", ", ".join(sys.argv[1:]))
PY
}

measure() {
  local site
  site=$("$EPY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  echo "edge venv site-packages: $(du -sm "$site" | cut -f1) MiB ($site)"
  du -sm "$site"/* 2>/dev/null | sort -rn | sed -n '1,6s/^/    /p'
  "$EPY" - <<'PY'
"""What a device needs: every installed distribution but pip, setuptools and the test tools."""
from importlib import metadata

TOOLS = {"pip", "setuptools", "wheel", "pytest", "pytest-timeout", "hypothesis", "pygments",
         "pluggy", "iniconfig", "packaging", "sortedcontainers", "attrs", "exceptiongroup",
         "tomli"}
total = 0
for dist in metadata.distributions():
    if dist.metadata["Name"].lower() in TOOLS:
        continue
    for file in dist.files or ():
        path = file.locate()
        if path.is_file():
            total += path.stat().st_size
print(f"edge venv without pip, setuptools and test tools: {total / 2**20:.0f} MiB")
PY
  "$EPY" - "$EDGE_VENV/bin/edge-agent" "$HYBRID_TEST_MODELS/mobilenet_v2_fp16.tflite" <<'PY'
"""Resident memory of `edge-agent run` with MobileNetV2 fp16 loaded and one answer given."""
import shutil, signal, socket, subprocess, sys, tempfile, time
from pathlib import Path

import numpy as np

from edge_agent.client import EdgeClient

agent_bin, model = sys.argv[1], sys.argv[2]
with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
work = Path(tempfile.mkdtemp(prefix="edge-rss-"))
config = work / "agent.yaml"
config.write_text(
    f"device_id: rss-probe\ndata_dir: {work / 'data'}\napi_address: 127.0.0.1:{port}\n"
    f"metrics_address: 'off'\nmodels:\n  - {{name: mobilenet, path: {model}, threads: 2}}\n"
)
proc = subprocess.Popen([agent_bin, "run", "--config", str(config)], stderr=subprocess.DEVNULL)
try:
    client = EdgeClient(f"127.0.0.1:{port}", timeout_s=60)
    deadline = time.monotonic() + 120
    while True:
        try:
            if client.server_ready():
                break
        except Exception:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            sys.exit("the agent did not become ready")
        time.sleep(0.1)
    (spec,) = client.model_metadata("mobilenet").inputs
    result = client.infer("mobilenet", {spec.name: np.zeros((1, 224, 224, 3), np.float32)})
    status = client.status()
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines()
    )
    print(
        f"agent RSS with MobileNetV2 fp16 loaded ({status['runtime']}): "
        f"{fields['VmRSS'].strip()} (peak {fields['VmHWM'].strip()}); "
        f"answer {result.outputs[next(iter(result.outputs))].shape} served_by={result.served_by}"
    )
    client.close()
finally:
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=30)
    shutil.rmtree(work, ignore_errors=True)
sys.exit(code)
PY
}

run_tests() {
  (cd "$ROOT" && HYBRID_TEST_EXPECT_RUNTIME="$1" "$EPY" scripts/run_pytest.py -q -p no:cacheprovider "${EDGE_TESTS[@]}")
}

step "2/3 fresh venv $EDGE_VENV with .[edge] + pytest, hypothesis, pytest-timeout"
rm -rf "$EDGE_VENV"
"$PYTHON" -m venv "$EDGE_VENV"
pip_install install --quiet --upgrade pip
pip_install install --quiet "$ROOT[edge]" pytest hypothesis pytest-timeout
check_light
run_tests ai_edge_litert
measure

step "3/3 the same venv on tflite-runtime and numpy < 2"
pip_install uninstall --quiet --yes ai-edge-litert
pip_install install --quiet tflite-runtime "numpy<2" "ml-dtypes<0.6"
"$EPY" -m pip check
"$EPY" - <<'PY'
import importlib.util, sys
import numpy
if importlib.util.find_spec("ai_edge_litert") is not None:
    sys.exit("ai_edge_litert is still installed")
from edge_agent.runtime import select_runtime
runtime = select_runtime()
if runtime.name != "tflite_runtime":
    sys.exit(f"the agent picked {runtime.name}, not tflite_runtime")
print(f"runtime: {runtime.name} {runtime.version}, numpy {numpy.__version__}")
PY
check_light
run_tests tflite_runtime
measure

step "edge tests passed on ai_edge_litert and tflite_runtime"
