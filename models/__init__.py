"""Pure networks, the checkpoint format, the model registry and the shared settings."""
