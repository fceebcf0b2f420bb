"""Rule task_eval: lm-eval tasks on the model with one point's keep-mask applied."""

from headattr.pipeline.workflow import log_to

log_to(snakemake.log[0])  # noqa: F821

import torch  # noqa: E402

from headattr.evaluation import protocol  # noqa: E402

sm = snakemake  # noqa: F821
torch.set_num_threads(max(1, sm.threads))
print(
    protocol.eval_stage(
        sm.params.spec,
        sm.input.keep,
        sm.params.model,
        sm.output.results,
        sm.output.cost,
    )
)
