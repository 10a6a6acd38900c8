"""The device daemon: local LiteRT inference with fallback to the cloud over MQTT."""
