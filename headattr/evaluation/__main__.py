"""``headattr-lm-eval`` / ``python -m headattr.evaluation``: lm-eval's own CLI with the ``headattr`` model registered.

lm-eval 0.4.x resolves ``--model`` only against its built-in table and has no plugin option, so this entry point
imports :mod:`headattr.evaluation.lm` (whose ``@register_model`` adds ``headattr``) and then runs
``lm_eval.__main__.cli_evaluate`` with the same arguments.
"""

from __future__ import annotations


def main() -> None:
    from lm_eval.__main__ import cli_evaluate

    from . import lm  # noqa: F401  (registers the headattr model)

    cli_evaluate()


if __name__ == "__main__":
    main()
