"""The run's report: markdown from a template, figures, compute tables, the task-validation section, and the
report's artifact key.

Layer 8: imports evaluation, analysis, pipeline and the layers below; never sweeps or cli.
"""
