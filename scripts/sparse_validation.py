"""Rule sparse_validation: results/<run>/sparse_validation.csv and the per-item scores of every point."""

from headattr.pipeline.workflow import log_to

log_to(snakemake.log[0])  # noqa: F821

from headattr.evaluation import sparse_protocol  # noqa: E402

sm = snakemake  # noqa: F821
print(
    sparse_protocol.table_stage(
        sm.input.results,
        sm.input.item_scores,
        sm.input.info,
        sm.params.points,
        sm.output.table,
        sm.output.item_scores,
    )
)
