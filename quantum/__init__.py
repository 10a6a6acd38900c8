"""The experimental variational quantum classifier, served through the hub."""
