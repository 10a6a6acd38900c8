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
        "--grpc-port",
        type=_grpc_port,
        help="gRPC port of the Open Inference Protocol (default 8001); 0 or 'off' turns it off",
    )
    tls = serve.add_argument_group("TLS (HTTP and gRPC)")
    tls.add_argument("--tls-cert-file", type=Path, help="PEM certificate chain of the listeners")
    tls.add_argument("--tls-key-file", type=Path, help="PEM private key of the certificate")
    tls.add_argument(
        "--tls-client-ca-file",
        type=Path,
        help="PEM CA bundle: require client certificates it signed (mutual TLS)",
    )
    serve.add_argument(
        "--config", type=Path, help="YAML settings file; HYBRID_HUB_* variables override it"
    )
    serve.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    mqtt = serve.add_argument_group("MQTT bridge (serve device requests over MQTT too)")
    mqtt.add_argument("--mqtt-broker", metavar="HOST:PORT", help="connect to this broker")
    mqtt.add_argument("--mqtt-username")
    mqtt.add_argument(
        "--mqtt-password", help="prefer HYBRID_HUB_MQTT__PASSWORD: flags show in process lists"
    )
    mqtt.add_argument("--mqtt-tls", action="store_true", default=None, help="use TLS")
    mqtt.add_argument(
        "--mqtt-ca-file", type=Path, help="CA bundle that signed the broker's certificate"
    )
    mqtt.add_argument("--mqtt-cert-file", type=Path, help="client certificate")
    mqtt.add_argument("--mqtt-key-file", type=Path, help="client key")
    mqtt.add_argument("--mqtt-share-group", help="shared subscription group (default hybrid-hub)")
    return parser


def _grpc_port(value: str) -> int:
    return 0 if value.strip().lower() == "off" else int(value)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    tls = {
        key: value
        for key, value in {
            "cert_file": args.tls_cert_file,
            "key_file": args.tls_key_file,
            "client_ca_file": args.tls_client_ca_file,
        }.items()
        if value is not None
    }
    mqtt = {
        key: value
        for key, value in {
            "broker": args.mqtt_broker,
            "username": args.mqtt_username,
            "password": args.mqtt_password,
            "tls": args.mqtt_tls,
            "ca_file": args.mqtt_ca_file,
            "cert_file": args.mqtt_cert_file,
            "key_file": args.mqtt_key_file,
            "share_group": args.mqtt_share_group,
        }.items()
        if value is not None
    }
    try:
        settings = load_settings(
            args.config,
            model_repository=args.model_repository,
            host=args.host,
            port=args.port,
            grpc_port=args.grpc_port,
            tls=tls or None,
            log_level=args.log_level,
            mqtt=mqtt or None,
        )
    except ConfigError as exc:
        print(f"cloud-hub: {exc.message}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from .server import run

    try:
        run(settings)
    except ConfigError as exc:
        print(f"cloud-hub: {exc.message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
