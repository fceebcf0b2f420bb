"""Model loading, per-family adapters and head gates."""
