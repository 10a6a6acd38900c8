"""``cloud-hub``: the command line. Flags map onto :class:`HubSettings`; ``run`` does the rest."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from .errors import ConfigError
from .settings import load_settings

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cloud-hub", description="The hybrid-inference cloud hub."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser(
        "serve", help="serve a model repository over HTTP (Open Inference Protocol v2)"
    )
    serve.add_argument("--model-repository", type=Path, help="folder of models in Triton's layout")
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to listen on (default 8000)")
    serve.add_argument(
        "--config", type=Path, help="YAML settings file; HYBRID_HUB_* variables override it"
    )
    serve.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = load_settings(
            args.config,
            model_repository=args.model_repository,
            host=args.host,
            port=args.port,
            log_level=args.log_level,
        )
    except ConfigError as exc:
        print(f"cloud-hub: {exc.message}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from .server import run

    run(settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
