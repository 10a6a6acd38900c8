#!/usr/bin/env bash
# The edge agent on arm64, emulated: an aarch64 Debian userland run by qemu-user-static, with the
# broker and the hub on the x86-64 host, so a fallback crosses architectures. Correctness, not
# speed: emulation is many times slower than a real board, and nothing here is timed.
#
#   scripts/arm64/lane.sh            (as root) the cross-architecture tests (tests/arm64), then
#                                    the edge agent's own tests inside the userland
#   scripts/arm64/lane.sh --quick    what CI runs: the userland check, the fallback across
#                                    architectures, and the agent's runtime tests in the userland
#
# The userland is built and cached by scripts/arm64/userland.sh (minutes the first time). The
# test models are built with TensorFlow from MAIN_VENV (default .venv), as in ci_edge.sh.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
# shellcheck source=scripts/arm64/common.sh
. scripts/arm64/common.sh
MAIN_VENV=${MAIN_VENV:-$ROOT/.venv}
export HYBRID_TEST_MODELS=${HYBRID_TEST_MODELS:-$ROOT/.cache/test-models}
export CI=${CI:-true}  # a missing model or broker fails the tests instead of skipping them
HOST_TESTS=(tests/arm64)
QUICK_HOST_TESTS=(-k "aarch64 or falls_back" tests/arm64)
EDGE_TESTS=(tests/unit/edge_agent tests/integration/test_edge_agent.py)
QUICK_EDGE_TESTS=(tests/unit/edge_agent/test_runtime.py tests/unit/edge_agent/test_quantization.py)

step() { printf '\n== [arm64] %s (%ds)\n' "$*" "$SECONDS"; }

if [ "${1:-}" = --in-namespace ]; then
  # Second half, inside the private mount namespace with_mounts made.
  rootfs=$2 quick=$3
  step "cross-architecture tests: the agent in the userland, broker and hub on the host"
  host=("${HOST_TESTS[@]}") tests=("${EDGE_TESTS[@]}")
  [ "$quick" = 1 ] && host=("${QUICK_HOST_TESTS[@]}") tests=("${QUICK_EDGE_TESTS[@]}")
  HYBRID_ARM64_USERLAND=$rootfs PATH="$PATH:/usr/sbin" \
    "$MAIN_VENV/bin/python" scripts/run_pytest.py -q -p no:cacheprovider "${host[@]}"
  step "the edge agent's tests inside the userland: ${tests[*]}"
  mkdir -p "$rootfs/tmp/test-models"
  cp -L "$HYBRID_TEST_MODELS"/digits_* "$HYBRID_TEST_MODELS"/manifest.json "$rootfs/tmp/test-models/"
  "${USERLAND_ENV[@]}" CI=true HYBRID_TEST_MODELS=/tmp/test-models \
    HYBRID_TEST_EXPECT_RUNTIME=ai_edge_litert HYBRID_TEST_AGENT_START_TIMEOUT_S=300 chroot "$rootfs" /bin/sh -ec \
    'cd /src && exec python scripts/run_pytest.py -q -p no:cacheprovider "$@"' pytest "${tests[@]}"
  exit 0
fi

quick=0
[ "${1:-}" = --quick ] && quick=1
[ "$(id -u)" -eq 0 ] || { echo "run as root (chroot and mounts need it): sudo $0" >&2; exit 1; }
step "1/3 arm64 userland"
rootfs=$(bash scripts/arm64/userland.sh | tail -n 1)
step "2/3 test models (built with TensorFlow from $MAIN_VENV, reused when cached)"
"$MAIN_VENV/bin/python" scripts/make_test_models.py "$HYBRID_TEST_MODELS"
step "3/3 tests"
with_mounts "$rootfs" "$ROOT" bash "$0" --in-namespace "$rootfs" "$quick"
step "arm64 lane passed"
