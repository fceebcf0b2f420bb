"""Rule aggregate: gather the shards into the dump, then the per-head and completeness tables and the users'
head_importance.pt / per_sample_ig.pt."""

from headattr.pipeline.workflow import log_to

log_to(snakemake.log[0])  # noqa: F821

from headattr.pipeline import stages  # noqa: E402

sm = snakemake  # noqa: F821
print(
    stages.gather_and_aggregate(
        sm.input.shards,
        sm.output.dump,
        sm.output.heads,
        sm.output.completeness,
        (sm.output.importance, sm.output.per_sample),
        sm.params.postprocess,
    )
)
