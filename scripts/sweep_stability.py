"""Rule sweep_stability: agreement of the head rankings of every sweep point, as tidy CSVs."""

from headattr.pipeline.workflow import log_to

log_to(snakemake.log[0])  # noqa: F821

from headattr.analysis.diagnostics import write_tables  # noqa: E402
from headattr.sweeps.tables import sweep_tables  # noqa: E402

sm = snakemake  # noqa: F821
dumps = dict(zip(sm.params.ig_keys, sm.input.dumps, strict=True))
summaries = dict(zip(sm.params.validation_keys, sm.input.summaries, strict=True))
benchmarks = dict(zip(sm.params.benchmarks, sm.input.benchmarks, strict=True))
manifests = dict(zip(sm.params.manifests, sm.input.manifests, strict=True))
task_results = dict(zip(sm.params.task_keys, sm.input.task_results, strict=True))
tables = sweep_tables(sm.params.plan, dumps, summaries, benchmarks, manifests, task_results)
for path in write_tables(tables, sm.output.tables):
    print(f"wrote {path}")
