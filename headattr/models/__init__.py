"""Model loading, per-family adapters, head gates, and the up-front checks of a checkpoint (config, weights,
tokenizer, mask id, positions) that need no weights loaded.

Layer 2: imports only :mod:`headattr.errors`.
"""
