"""headattr: attention-head importance by Integrated Gradients over per-head gates.

The package is the engine behind the Snakemake workflow; it imports no Snakemake and can be used alone
(see :mod:`headattr.cli`). Its subpackages are layers, each importing only from itself and the layers below
(``tests/test_architecture.py`` enforces the order and that there is no import cycle):

    errors < stats, data, demo < models, objective < engine < methods < pipeline < analysis < evaluation
    < report < sweeps < cli
"""

__version__ = "0.1.0"
