"""The gate engine: the two batched primitives ``losses(rows)`` and ``gradients(rows)`` over rows of gate
matrices, chunked to a memory budget, with the prefix cache and attention replay beneath every method, and the
cost model that counts what it runs.

Layer 3: imports models, objective, data, stats, errors.
"""
