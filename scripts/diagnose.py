"""Rules diagnose_unit / diagnose_seeds / diagnose_methods: diagnostics tables of dumps."""

from headattr.pipeline.workflow import log_to

log_to(snakemake.log[0])  # noqa: F821

from headattr.analysis import diagnostics  # noqa: E402
from headattr.pipeline.dumps import load_dump  # noqa: E402

sm = snakemake  # noqa: F821
cfg = dict(sm.params.cfg)
if sm.rule == "diagnose_unit":
    tables = diagnostics.unit_diagnostics(load_dump(sm.input.dump), cfg, sm.params.postprocess)
elif sm.rule == "diagnose_seeds":
    dumps = load_dump(sm.input.dump_a), load_dump(sm.input.dump_b)
    tables = diagnostics.seed_diagnostics(*dumps, sm.params.labels, cfg, sm.params.postprocess)
else:
    from headattr.pipeline.exports import load_importance_file

    by_method = dict(zip(sm.params.methods, (load_dump(p) for p in sm.input.dumps), strict=True))
    shape = next(iter(by_method.values()))["ig"].shape[2:]
    imported = {k: load_importance_file(p, *shape, key=k) for k, p in sm.params.imported.items()}
    tables = diagnostics.method_diagnostics(by_method, cfg, imported, sm.params.postprocess)
for path in diagnostics.write_tables(tables, sm.output.tables):
    print(f"wrote {path}")
