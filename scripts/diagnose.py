"""Rules diagnose_unit / diagnose_seeds / diagnose_methods: diagnostics tables of dumps."""

from headattr.pipeline.workflow import log_to

log_to(snakemake.log[0])  # noqa: F821

from headattr.analysis import stages  # noqa: E402

sm = snakemake  # noqa: F821
if sm.rule == "diagnose_unit":
    written = stages.unit_tables(sm.input.dump, sm.params.cfg, sm.params.postprocess, sm.output.tables)
elif sm.rule == "diagnose_seeds":
    written = stages.seed_tables(
        sm.input.dump_a, sm.input.dump_b, sm.params.labels, sm.params.cfg, sm.params.postprocess, sm.output.tables
    )
else:
    dumps = dict(zip(sm.params.methods, sm.input.dumps, strict=True))
    written = stages.method_tables(dumps, sm.params.imported, sm.params.cfg, sm.params.postprocess, sm.output.tables)
for path in written:
    print(f"wrote {path}")
