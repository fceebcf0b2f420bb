"""Attribution methods built on the engine's two primitives (losses and gate gradients of rows): IG paths and
quadrature, STP, Shapley sampling, first order, leave-one-out, adaptive refinement.

Layer 4: imports engine, models, objective, data, stats, errors.
"""
