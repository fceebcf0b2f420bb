"""Rule tokenize: records -> token ids with the target region, under the max-length policy."""

from headattr.workflow import log_to, write_manifest

started = log_to(snakemake.log[0])  # noqa: F821

from headattr import stages  # noqa: E402

sm = snakemake  # noqa: F821
data = sm.params.data
report = stages.tokenize(
    sm.input.records,
    sm.params.model,
    data["max_len"],
    data["length_policy"],
    data["chat_template"],
    sm.output.tokens,
    objective=sm.params.objective,
)
print(f"tokenized: {report}")
write_manifest(sm.output.manifest, sm.params.slice, [sm.input.records], started, {"result": report})
