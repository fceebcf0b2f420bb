"""Rule attention_dispersion: per-head attention dispersion over one seed's attribution samples and masks."""

from headattr.pipeline.workflow import log_to

log_to(snakemake.log[0])  # noqa: F821

import torch  # noqa: E402

from headattr.analysis import stages  # noqa: E402

sm = snakemake  # noqa: F821
torch.set_num_threads(max(1, sm.threads))
info = stages.attention_dispersion(
    sm.input.tokens, sm.input.masks, sm.params.model, sm.params.objective, sm.params.cfg, sm.output.heads
)
print(info)
