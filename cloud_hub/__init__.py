"""The cloud hub: Open Inference Protocol v2 serving over HTTP and MQTT."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("hybrid-inference")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"

__all__ = ["__version__"]
