"""lm-eval runs the headattr model on local task YAMLs over jsonl files: metrics come from our scores."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import make_tokenizer, tiny_bert

pytest.importorskip("lm_eval")

from lm_eval.api.instance import Instance  # noqa: E402

from headattr.evaluation.lm import HeadAttrLM  # noqa: E402
from headattr.evaluation.results import TASK_COLUMNS, tidy_results  # noqa: E402

CLI_ARGS = "mc_num=4,disable_tqdm=true"  # lm-eval's CLI passes --device (default cuda:0) and --batch_size itself
MODEL_ARGS = f"device=cpu,{CLI_ARGS}"
TASK = """task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
doc_to_text: "{{{{q}}}}"
"""
MC = "output_type: multiple_choice\ndoc_to_choice: '{{choices}}'\ndoc_to_target: label\nmetric_list:\n  - metric: acc\n"
GEN = (
    "output_type: generate_until\ndoc_to_target: answer\ngeneration_kwargs:\n  until: ['w0']\n  max_gen_toks: 2\n"
    "metric_list:\n  - metric: exact_match\n"
)


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A saved tiny BERT MDLM and two tasks whose answers are planted from the model's own scores: the first 4 of
    6 multiple-choice labels are its best choice (acc 4/6), the first 3 generation targets its output (em 3/6)."""
    root = tmp_path_factory.mktemp("tasks")
    model_dir = root / "model"
    tiny_bert().save_pretrained(model_dir)
    make_tokenizer().save_pretrained(model_dir)
    lm = HeadAttrLM(pretrained=str(model_dir), **dict(kv.split("=") for kv in MODEL_ARGS.split(",")))
    docs = []
    for i in range(6):
        q, choices = f"w{i} w{i + 1}", [f"w{i + 2}", f"w{i + 3}", f"w{i + 4}"]
        scores = [lm.loglikelihood([Instance("loglikelihood", {}, (q, " " + c), 0)])[0][0] for c in choices]
        best = int(np.argmax(scores))
        generated = lm.generate_until([Instance("generate_until", {}, (q, {"until": ["w0"], "max_gen_toks": 2}), 0)])
        docs.append(
            {
                "q": q,
                "choices": choices,
                "label": best if i < 4 else (best + 1) % 3,
                "answer": generated[0] if i < 3 else "w63",
            }
        )
    data = root / "docs.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in docs))
    tasks = root / "tasks"
    tasks.mkdir()
    (tasks / "tiny_mc.yaml").write_text(TASK.format(name="tiny_mc", data=data) + MC)
    (tasks / "tiny_gen.yaml").write_text(TASK.format(name="tiny_gen", data=data) + GEN)
    return root


def test_simple_evaluate_computes_metrics_from_the_headattr_model(project, monkeypatch):
    import lm_eval
    from lm_eval.tasks import TaskManager

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    results = lm_eval.simple_evaluate(
        model="headattr",
        model_args=f"pretrained={project / 'model'},{MODEL_ARGS}",
        tasks=["tiny_mc", "tiny_gen"],
        task_manager=TaskManager(include_path=str(project / "tasks"), include_defaults=False),
    )
    rows = {r["task"]: r for r in tidy_results(results, method="m", order="most", fraction=0.1)}
    # acc 4/6 and em 3/6; stderr = sample standard deviation / sqrt(n), as lm-eval's mean_stderr
    for task, hits in (("tiny_mc", [1, 1, 1, 1, 0, 0]), ("tiny_gen", [1, 1, 1, 0, 0, 0])):
        expected = {"method": "m", "order": "most", "fraction": 0.1, "task": task, "n": 6}
        assert {k: rows[task][k] for k in expected} == expected
        assert rows[task]["value"] == pytest.approx(np.mean(hits))
        assert rows[task]["stderr"] == pytest.approx(np.std(hits, ddof=1) / np.sqrt(6))
    assert rows["tiny_mc"]["metric"] == "acc" and rows["tiny_gen"]["metric"] == "exact_match"
    assert set(TASK_COLUMNS) <= set(rows["tiny_mc"])


@pytest.mark.slow  # lm-eval's CLI indexes all of its ~10k built-in task files first (30 s on 2 cores)
def test_command_line_entry_registers_the_model(project, tmp_path):
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "PYTHONPATH": str(Path(__file__).parents[1])}
    cmd = [sys.executable, "-m", "headattr.evaluation", "--model", "headattr", "--tasks", "tiny_mc"]
    cmd += ["--model_args", f"pretrained={project / 'model'},{CLI_ARGS}", "--include_path", str(project / "tasks")]
    cmd += ["--device", "cpu", "--batch_size", "4", "--output_path", str(tmp_path / "out")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (result,) = list((tmp_path / "out").rglob("results_*.json"))
    assert json.loads(result.read_text())["results"]["tiny_mc"]["acc,none"] == pytest.approx(4 / 6)
