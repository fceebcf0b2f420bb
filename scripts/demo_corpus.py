"""Rule demo_corpus: rebuild the demo corpus from the installed packages."""

from headattr.pipeline.workflow import log_to

log_to(snakemake.log[0])  # noqa: F821

from headattr.demo.corpus import build_demo_corpus, write_jsonl  # noqa: E402

sm = snakemake  # noqa: F821
records = build_demo_corpus(sm.params.per_category, sm.params.seed)
write_jsonl(records, sm.output.corpus)
print(f"wrote {len(records)} records to {sm.output.corpus}")
