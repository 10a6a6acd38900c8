"""Load a model once in a child process before the agent loads it in its own.

A TFLite interpreter trusts the file it is given: some builds (tflite-runtime 2.14, for one)
crash the whole process on a corrupt flatbuffer instead of raising. Loading, and running once, in
a child first means such a file fails only its own model (reported as a :class:`ModelLoadError`)
while the other models serve. :class:`~edge_agent.loader.ModelLoader` runs it before it loads
a model in the agent.

    python -m edge_agent.probe RUNTIME PATH THREADS     (what the agent runs; exit 0 if it loads)
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from .config import ModelConfig
from .errors import AgentError, ModelLoadError
from .models import load_model
from .runtime import RUNTIME_ORDER, select_runtime

__all__ = ["probe_model"]

ERROR_MARKER = "edge-agent-probe-error: "


def probe_model(runtime: str, path: Path, *, threads: int, timeout_s: float) -> None:
    """Raise :class:`ModelLoadError` if loading and running ``path`` fails or kills the child."""
    command = [sys.executable, "-m", "edge_agent.probe", runtime, str(path), str(threads)]
    try:
        done = subprocess.run(command, capture_output=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired as exc:
        raise ModelLoadError(
            f"loading {path} took over {timeout_s:g} s in a probe process"
        ) from exc
    except OSError as exc:
        raise ModelLoadError(f"cannot start a probe process for {path}: {exc}") from exc
    if done.returncode == 0:
        return
    stderr = done.stderr.decode("utf-8", "replace")
    for line in reversed(stderr.splitlines()):
        if line.startswith(ERROR_MARKER):
            raise ModelLoadError(line[len(ERROR_MARKER) :])
    if done.returncode < 0:
        name = signal.Signals(-done.returncode).name
        raise ModelLoadError(
            f"{path} crashed the {runtime} interpreter ({name}) while loading; the file is "
            "corrupt or not a TFLite model"
        )
    tail = stderr.strip().splitlines()[-1:] or ["no output"]
    raise ModelLoadError(f"probe process for {path} exited with {done.returncode}: {tail[0]}")


def main(argv: Sequence[str]) -> int:
    runtime_name, path, threads = argv
    if runtime_name not in RUNTIME_ORDER:
        sys.stderr.write(f"{ERROR_MARKER}unknown runtime {runtime_name!r}\n")
        return 2
    try:
        runtime = select_runtime(runtime_name)
        config = ModelConfig(name="probe", path=Path(path), threads=int(threads))
        load_model(config, runtime).close()
    except AgentError as exc:
        message = str(exc).removeprefix("model 'probe': ")
        sys.stderr.write(f"{ERROR_MARKER}{message}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
