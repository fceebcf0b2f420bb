"""Rule tokenize: the first valid samples of the draw -> token ids with the target region."""

from headattr.pipeline.workflow import log_to, write_manifest

started = log_to(snakemake.log[0])  # noqa: F821

from headattr.pipeline import stages  # noqa: E402

sm = snakemake  # noqa: F821
data, params = sm.params.data, sm.params.slice
report = stages.tokenize(
    sm.input.records,
    sm.params.model,
    data["max_len"],
    data["length_policy"],
    data["chat_template"],
    sm.output.tokens,
    objective=sm.params.objective,
    n=params["data"]["max_samples"],
    heldout=params.get("heldout", 0),
    stratify=params["data"]["stratify"],
    options=params["options"],
)
print(f"tokenized: {report}")
write_manifest(sm.output.manifest, params, [sm.input.records], started, {"result": report})
