"""Rule sweep_report: the sweep's markdown report and figures from its tables."""

from headattr.pipeline.workflow import log_to

log_to(snakemake.log[0])  # noqa: F821

from headattr.analysis.diagnostics import read_tables  # noqa: E402
from headattr.sweeps.report import write_sweep_report  # noqa: E402

sm = snakemake  # noqa: F821
write_sweep_report(
    sm.params.plan,
    read_tables(sm.input.tables),
    sm.output.report_md,
    sm.output.figures,
    sm.params.configs,
    sm.output.configs,
)
print(f"wrote {sm.output.report_md}")
