"""Rule task_validation: results/<run>/task_validation.csv and the evaluation cost per point."""

from headattr.pipeline.workflow import log_to

log_to(snakemake.log[0])  # noqa: F821

from headattr.evaluation import protocol  # noqa: E402

sm = snakemake  # noqa: F821
print(
    protocol.table_stage(
        sm.input.results,
        sm.input.costs,
        sm.params.points,
        sm.output.table,
        sm.output.cost,
    )
)
