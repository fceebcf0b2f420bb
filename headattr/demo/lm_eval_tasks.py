"""Local lm-eval (0.4) task files over the demo tasks' held-out items: generation and multiple choice.

Each task is a YAML file plus a jsonl of held-out items (``headattr.demo.tasks``, content-disjoint from the
demo model's training items). Data paths in the YAML files are relative to the repository root, so run
lm-eval from there: ``lm_eval --include_path resources/tasks --tasks headattr_demo ...``.

- ``headattr_demo_copy``, ``headattr_demo_add`` (generate_until): greedy generation of as many tokens as the
  answers have (6 and 3), exact match after stripping whitespace. Chance 1e-6 and 1/179.
- ``headattr_demo_recall_mc`` (multiple_choice): the ten digits as choices, scored by likelihood (acc and
  acc_norm). Chance 0.1.

    python -m headattr.demo.lm_eval_tasks resources/tasks --n 400 --seed 0
"""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from .corpus import write_jsonl
from .tasks import CHANCE, task_items

GROUP = "headattr_demo"
GENERATION = ("copy", "add")
MULTIPLE_CHOICE = ("recall",)
DIGITS = [str(d) for d in range(10)]


def answer_tokens(task: str) -> int:
    """Symbols (= demo tokens) of the task's answers, all of one length: the generation budget, so that the
    masked span ends where training answers end (in front of [SEP])."""
    return len(task_items(task, 0, 1, "heldout")[0][1].split())


def generation_yaml(task: str, data_file: str) -> dict:
    return {
        "task": f"{GROUP}_{task}",
        "tag": [GROUP],
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": data_file}},
        "test_split": "test",
        "output_type": "generate_until",
        "doc_to_text": "{{prompt}}",
        "doc_to_target": "{{answer}}",
        "target_delimiter": " ",
        "generation_kwargs": {"until": ["\n"], "max_gen_toks": answer_tokens(task), "do_sample": False},
        "filter_list": [{"name": "strip", "filter": [{"function": "remove_whitespace"}, {"function": "take_first"}]}],
        "metric_list": [
            {
                "metric": "exact_match",
                "aggregation": "mean",
                "higher_is_better": True,
                "regexes_to_ignore": [r"^\s+", r"\s+$"],
            }
        ],
        "metadata": {"version": 1.0, "chance_exact_match": CHANCE[task]},
    }


def multiple_choice_yaml(task: str, data_file: str) -> dict:
    return {
        "task": f"{GROUP}_{task}_mc",
        "tag": [GROUP],
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": data_file}},
        "test_split": "test",
        "output_type": "multiple_choice",
        "doc_to_text": "{{prompt}}",
        "doc_to_choice": "choices",
        "doc_to_target": "label",
        "target_delimiter": " ",
        "metric_list": [
            {"metric": "acc", "aggregation": "mean", "higher_is_better": True},
            {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True},
        ],
        "metadata": {"version": 1.0, "chance_acc": 1 / len(DIGITS)},
    }


def build_lm_eval_tasks(out_dir: str | Path, n: int = 400, seed: int = 0, data_prefix: str | None = None) -> list[Path]:
    """Write <task>.jsonl and <task>.yaml for every demo lm-eval task into out_dir; return the paths.

    data_prefix is how the YAML files name out_dir (default: out_dir as given, e.g. resources/tasks).
    """
    out_dir = Path(out_dir)
    prefix = str(out_dir) if data_prefix is None else data_prefix
    written: list[Path] = []
    for task in (*GENERATION, *MULTIPLE_CHOICE):
        items = task_items(task, seed, n, "heldout", unique=True)
        name = f"{task}_mc" if task in MULTIPLE_CHOICE else task
        if task in MULTIPLE_CHOICE:
            rows = [
                {"id": f"{task}-{i:05d}", "prompt": p, "choices": DIGITS, "label": DIGITS.index(a)}
                for i, (p, a) in enumerate(items)
            ]
            spec = multiple_choice_yaml(task, f"{prefix}/{name}.jsonl")
        else:
            rows = [{"id": f"{task}-{i:05d}", "prompt": p, "answer": a} for i, (p, a) in enumerate(items)]
            spec = generation_yaml(task, f"{prefix}/{name}.jsonl")
        written.append(write_jsonl(rows, out_dir / f"{name}.jsonl"))
        yaml_path = out_dir / f"{name}.yaml"
        yaml_path.write_text(yaml.safe_dump(spec, sort_keys=False, allow_unicode=True))
        written.append(yaml_path)
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    parser.add_argument("--n", type=int, default=400, help="held-out items per task")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for path in build_lm_eval_tasks(args.out_dir, args.n, args.seed):
        print(path)


if __name__ == "__main__":
    main()
