"""Rule report: the run's report.md, figures and summary.json."""

from headattr.pipeline.workflow import log_to

log_to(snakemake.log[0])  # noqa: F821

from headattr.report.document import build_report  # noqa: E402

sm = snakemake  # noqa: F821
build_report(
    sm.params.units,
    sm.input,
    sm.params.config,
    sm.output.report_md,
    sm.output.summary,
    sm.output.figures,
    sm.params.seed_pairs,
    sm.params.method_groups,
    sm.params.validation_seeds,
    sm.params.token_sets,
    sm.input.template,
    dispersion=dict(zip(sm.params.dispersion_seeds, sm.input.dispersion, strict=True)),
)
