"""Rule attribute: IG over head gates for one shard of one (seed, method), checkpointed per sample."""

import os
import shutil

from headattr.pipeline.workflow import log_to, write_manifest

started = log_to(snakemake.log[0])  # noqa: F821

import torch  # noqa: E402

from headattr.pipeline import stages  # noqa: E402

sm = snakemake  # noqa: F821
torch.set_num_threads(max(1, sm.threads))
slurm = {k: os.environ.get(k, "") for k in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID")}
print(" ".join(f"{k}={v}" for k, v in slurm.items()), f"threads={sm.threads} shard={sm.wildcards.shard}")
info = stages.attribute(
    sm.input.tokens,
    sm.input.masks,
    sm.params.model,
    sm.params.settings,
    sm.params.engine,
    sm.output.shard,
    checkpoint_dir=sm.params.checkpoint_dir,
    meta={"params": sm.params.slice},
    shard=sm.wildcards.shard,
)
write_manifest(sm.output.manifest, sm.params.slice, [sm.input.tokens, sm.input.masks], started, {"result": info})
shutil.rmtree(sm.params.checkpoint_dir, ignore_errors=True)
