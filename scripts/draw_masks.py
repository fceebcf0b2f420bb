"""Rule draw_masks: the masks that every method scores, keyed by (seed, sample id, p, s)."""

from headattr.pipeline.workflow import log_to, write_manifest

started = log_to(snakemake.log[0])  # noqa: F821

from headattr.pipeline import stages  # noqa: E402

sm = snakemake  # noqa: F821
o = sm.params.objective
info = stages.masks(
    sm.input.tokens,
    sm.params.model,
    o["kind"],
    o["mask_probs"],
    o["mask_mode"],
    sm.params.seed,
    sm.output.masks,
    o["mask_samples"],
)
print(f"masks: {info}")
write_manifest(sm.output.manifest, sm.params.slice, sm.input, started, {"result": info})
