"""bench/docs_numbers.py: measured numbers in the docs carry a commit stamp."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "docs_numbers.py"


def run(*args):
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True)


def test_planted_unstamped_paragraph_fails_and_stamped_passes(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "Intro without numbers.\n\nThe run took 2 min 00 s, 1.87x faster.\n\n"
        "Stamped: 41 s (measured at e65188e, 2026-12-03).\n\n```\ntook 9 s\n```\n\n"
        "Default 300 s timeout. <!-- settings, not measurements -->\n\n"
        "Caption of a table.\n\n| run | wall |\n|---|---|\n| a | 12 s |\n"
    )
    result = run(page)
    assert result.returncode == 1
    assert [line.split(":")[1] for line in result.stdout.splitlines()] == ["3", "13"]
    page.write_text("The run took 2 min 00 s (measured at e65188e, 2026-12-03).\n")
    assert run(page).returncode == 0


def test_repo_docs_numbers_are_stamped():
    result = run(ROOT)
    assert result.returncode == 0, result.stdout
