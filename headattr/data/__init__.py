"""Data sources (files, datasets, the demo corpus) and tokenization with a target region.

Layer 1: imports only :mod:`headattr.errors`.
"""
