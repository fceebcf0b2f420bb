"""Ablation sweeps: points planned from ``sweep:`` axes, stability and sensitivity tables across points, and the
sweep report.

Layer 9: imports every layer but cli.
"""
