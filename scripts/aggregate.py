"""Rule aggregate: per-head table and completeness table of one dump."""

from headattr.workflow import log_to

log_to(snakemake.log[0])  # noqa: F821

from headattr import stages  # noqa: E402

sm = snakemake  # noqa: F821
print(stages.aggregate_dump(sm.input.dump, sm.output.heads, sm.output.completeness))
