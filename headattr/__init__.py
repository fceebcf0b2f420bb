"""headattr: attention-head importance by Integrated Gradients over per-head gates.

The package is the engine behind the Snakemake workflow; it imports no Snakemake and can be used alone
(see :mod:`headattr.cli`).
"""

__version__ = "0.1.0"
