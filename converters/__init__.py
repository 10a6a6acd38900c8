"""The converter: device-specific artifacts from one source model, validated."""
