"""Rule sweep_stability: agreement of the head rankings of every sweep point, as tidy CSVs."""

from headattr.workflow import log_to

log_to(snakemake.log[0])  # noqa: F821

from headattr.diagnostics import write_tables  # noqa: E402
from headattr.sweep_tables import sweep_tables  # noqa: E402

sm = snakemake  # noqa: F821
plan, results = sm.params.plan, sm.params.results
dumps = {k: f"{results}/ig/{k}/dump.npz" for e in plan["entities"] for k in e["ig"]}
summaries = {v["key"]: f"{results}/validation/{v['key']}/summary.csv" for v in plan["validation"]}
for path in write_tables(sweep_tables(plan, dumps, summaries, f"{results}/benchmarks"), sm.output.tables):
    print(f"wrote {path}")
