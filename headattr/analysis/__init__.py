"""Diagnostics over dumps (cross-sample, 1-vs-N, seeds, methods, categories, mask ratios), attention dispersion,
and the held-out pruning validation (deletion curves, AOPC).

Layer 6: imports pipeline and the layers below.
"""
