"""Causal validation on downstream tasks: head keep-masks, an lm-eval-harness model that applies them, and
the planning and stages of task validation.

:mod:`.keepmask` (pure), :mod:`.elbo`, :mod:`.sampler` and :mod:`.results` need only torch; :mod:`.lm` needs the
``eval`` extra (lm-eval 0.4.x) and registers the ``headattr`` model when imported.
Layer 7: imports analysis, pipeline and the layers below; never report, sweeps or cli.
"""
