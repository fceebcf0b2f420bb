"""Rule demo_lm_eval_tasks: lm-eval task files over the demo tasks' held-out items."""

from headattr.pipeline.workflow import log_to

log_to(snakemake.log[0])  # noqa: F821

from headattr.demo.lm_eval_tasks import build_lm_eval_tasks  # noqa: E402

sm = snakemake  # noqa: F821
for path in build_lm_eval_tasks(sm.output.tasks, sm.params.n, sm.params.seed):
    print(path)
