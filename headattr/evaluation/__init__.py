"""Causal validation on downstream tasks: head keep-masks and an lm-eval-harness model that applies them.

:mod:`.keepmask` (pure), :mod:`.elbo`, :mod:`.sampler` and :mod:`.results` need only torch; :mod:`.lm` needs the
``eval`` extra (lm-eval 0.4.x) and registers the ``headattr`` model when imported.
"""
