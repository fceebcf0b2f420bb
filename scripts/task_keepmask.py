"""Rule task_keepmask: the keep-mask of one task-validation point."""

from headattr.pipeline.workflow import log_to

log_to(snakemake.log[0])  # noqa: F821

from headattr.evaluation import protocol  # noqa: E402

sm = snakemake  # noqa: F821
print(
    protocol.keepmask_stage(
        sm.params.spec,
        list(sm.input.importance),
        sm.params.model,
        sm.output.keep,
    )
)
