"""Rule validate_pruning: deletion curves of every method's ranking on held-out samples."""

from headattr.pipeline.workflow import log_to

log_to(snakemake.log[0])  # noqa: F821

import torch  # noqa: E402

from headattr.analysis import stages  # noqa: E402

sm = snakemake  # noqa: F821
torch.set_num_threads(max(1, sm.threads))
dumps = dict(zip(sm.params.methods, sm.input.dumps, strict=True))
print(
    stages.validate_pruning(
        dumps,
        sm.input.tokens,
        sm.input.masks,
        sm.params.model,
        sm.params.objective,
        sm.params.cfg,
        sm.params.engine,
        sm.output.curves,
        sm.output.summary,
        sm.params.postprocess,
        sm.params.importance_files,
    )
)
