"""``python -m demo``: the main job end to end (``make demo``). Exit status 0 on success, 1 when
a step fails (the message says why and what to do), 130 after Ctrl-C and 143 after SIGTERM."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path
from types import FrameType

from .errors import DemoError
from .options import (
    DEFAULT_CACHE,
    DEFAULT_QUANTUM_ITERATIONS,
    DEFAULT_REPORT,
    DEFAULT_THRESHOLD,
    DemoOptions,
)
from .processes import ChildError
from .run import run

_received: list[int] = []


def _interrupt(signum: int, frame: FrameType | None) -> None:
    """SIGTERM stops the run the way Ctrl-C does: every child is stopped first."""
    _received.append(signum)
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m demo",
        description="Train, convert, serve and stream the digits through edge and cloud.",
    )
    parser.add_argument(
        "--limit", type=int, help="stream only the first N test digits (default: all 397)"
    )
    parser.add_argument(
        "--threshold",
        type=float,
        default=DEFAULT_THRESHOLD,
        help="edge confidence under which a digit goes to the cloud (default %(default)s)",
    )
    parser.add_argument(
        "--report-dir", type=Path, default=DEFAULT_REPORT, help="default %(default)s/"
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=DEFAULT_CACHE,
        help="trained and converted models (default .cache/demo/ in the clone)",
    )
    parser.add_argument(
        "--work-dir", type=Path, help="keep the processes' files and logs here (default: temporary)"
    )
    parser.add_argument(
        "--broker",
        choices=["auto", "mosquitto", "amqtt"],
        default="auto",
        help="Mosquitto (MQTT 5) when installed, else the pure-Python amqtt (MQTT 3.1.1)",
    )
    parser.add_argument(
        "--quantum-iterations",
        type=int,
        default=DEFAULT_QUANTUM_ITERATIONS,
        help="COBYLA iterations for the iris quantum classifier, trained once per value "
        "(default %(default)s)",
    )
    args = parser.parse_args(argv)
    try:
        options = DemoOptions(
            limit=args.limit,
            threshold=args.threshold,
            report_dir=args.report_dir,
            cache_dir=args.cache_dir,
            work_dir=args.work_dir,
            broker=args.broker,
            quantum_iterations=args.quantum_iterations,
        )
    except ValueError as exc:
        parser.error(str(exc))
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        run(options)
    except KeyboardInterrupt:
        print("demo: interrupted; every process it started has stopped", file=sys.stderr)
        return 128 + (_received[0] if _received else signal.SIGINT)
    except ChildError as exc:
        tail = exc.child.tail() or "(empty)"
        print(f"demo: {exc}; the end of its log ({exc.child.log}):\n{tail}", file=sys.stderr)
        return 1
    except DemoError as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
