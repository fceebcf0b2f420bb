"""Validation of head rankings by pruning held-out samples (deletion curves and their summaries)."""

from .deletion import (
    CURVE_COLUMNS,
    FRACTIONS,
    ORDERS,
    deletion_curves,
    deletion_summary,
    iterative_deletion_curves,
    mean_metrics,
    reattributor,
    removal_order,
)

__all__ = [
    "CURVE_COLUMNS",
    "FRACTIONS",
    "ORDERS",
    "deletion_curves",
    "deletion_summary",
    "iterative_deletion_curves",
    "mean_metrics",
    "reattributor",
    "removal_order",
]
