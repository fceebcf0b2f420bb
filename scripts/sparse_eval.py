"""Rule sparse_eval: lm-eval tasks with one point's adaptive block-sparse attention."""

from headattr.pipeline.workflow import log_to

log_to(snakemake.log[0])  # noqa: F821

import torch  # noqa: E402

from headattr.evaluation import sparse_protocol  # noqa: E402

sm = snakemake  # noqa: F821
torch.set_num_threads(max(1, sm.threads))
print(
    sparse_protocol.eval_stage(
        sm.params.spec,
        sm.input.importance,
        sm.params.model,
        sm.output.results,
        sm.output.item_scores,
        sm.output.info,
    )
)
