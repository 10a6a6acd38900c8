"""``edge-agent``: ``run`` serves, ``check`` validates a config and loads its models.

Flags only say where the config is and override the log level; everything else is in the config
file or ``HYBRID_AGENT_*`` variables. Exit codes: 0 ok, 1 a model failed ``check``, 2 the
configuration (or an address) is invalid.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from .agent import CheckReport, check, run
from .config import CONFIG_FILE_ENV, AgentConfig, load_config
from .errors import AgentError, ConfigError

__all__ = ["main"]

logger = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_CHECK_FAILED = 1
EXIT_CONFIG = 2
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edge-agent",
        description="Local TFLite/LiteRT inference behind an Open Inference Protocol v2 API.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for name, text in (
        ("run", "serve until SIGTERM, then drain and exit"),
        ("check", "validate the config and load every model, without serving"),
    ):
        sub = commands.add_parser(name, help=text, description=text)
        sub.add_argument(
            "--config",
            type=Path,
            default=os.environ.get(CONFIG_FILE_ENV) or None,
            help=f"YAML config file (default: ${CONFIG_FILE_ENV}; settings also from "
            "HYBRID_AGENT_* variables)",
        )
        sub.add_argument(
            "--log-level",
            choices=["DEBUG", "INFO", "WARNING", "ERROR"],
            help="overrides log_level from the config",
        )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level or "INFO", format=LOG_FORMAT, stream=sys.stderr)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        sys.stderr.write(f"edge-agent: {exc}\n")
        return EXIT_CONFIG
    if args.log_level is None:
        logging.getLogger().setLevel(config.log_level)
    try:
        if args.command == "check":
            return _check(config)
        return run(config)
    except ConfigError as exc:
        sys.stderr.write(f"edge-agent: {exc}\n")
        return EXIT_CONFIG
    except AgentError as exc:
        logger.error("%s", exc)
        return EXIT_CHECK_FAILED


def _check(config: AgentConfig) -> int:
    report = check(config)
    sys.stdout.write(_format_report(config, report))
    return EXIT_OK if report.ok else EXIT_CHECK_FAILED


def _format_report(config: AgentConfig, report: CheckReport) -> str:
    lines = [f"config: ok (device {config.device_id}, class {config.device_class})"]
    if report.runtime is not None:
        lines.append(f"runtime: {report.runtime.name} {report.runtime.version}")
    else:
        lines.append(f"runtime: FAILED: {report.runtime_error}")
    for status in report.models:
        if status.error is None:
            lines.append(f"model {status.name}: {status.state.value} ({status.path})")
        else:
            lines.append(f"model {status.name}: FAILED: {status.error}")
    lines.append("check: ok" if report.ok else "check: FAILED")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
