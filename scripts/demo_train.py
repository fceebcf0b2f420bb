"""Rule demo_train: train the demo masked-diffusion LM with the LLaDA objective (seeded)."""

import json

from headattr.pipeline.workflow import log_to

log_to(snakemake.log[0])  # noqa: F821

from headattr.demo.train import train_mdlm  # noqa: E402

sm = snakemake  # noqa: F821
manifest = train_mdlm(sm.input.corpus, sm.output.model, dict(sm.params.train))
print(json.dumps(manifest, indent=2, default=str))
