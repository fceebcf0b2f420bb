"""The masked-diffusion (and causal) objective: which positions are scored, and how the loss weighs them.

Layer 2: imports data and errors.
"""
