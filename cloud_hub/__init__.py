"""The cloud hub: Open Inference Protocol v2 serving over HTTP and MQTT."""
