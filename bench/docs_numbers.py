"""List measurement paragraphs in README.md and docs/*.md without a commit stamp.

A paragraph (blank-line separated, code fences skipped) that holds a number with a unit (s, min, %, or a ratio
such as 1.87x) must also hold a commit stamp (a 7-40 hex word), so every measured number says what it was
measured on. A paragraph marked `<!-- settings, not measurements -->` (defaults and limits) is skipped. A
table is checked together with the paragraph just above it (its caption). Exits 1 if any paragraph lacks a
stamp. Usage: python3 bench/docs_numbers.py [ROOT_OR_FILES...]
"""

import re
import sys
from pathlib import Path

NUMBER_WITH_UNIT = re.compile(r"(?<![\w.])\d+(?:\.\d+)?(?:\s?(?:s|min|%)(?![\w-])|x(?![\w-]))")
NOT_MEASURED = "<!-- settings, not measurements -->"
STAMP = re.compile(r"\b[0-9a-f]{7,40}\b")


def paragraphs(text):
    """(first line number, text) of each paragraph outside code fences; a table joins its caption."""
    blocks, current, start, fenced = [], [], 0, False
    for number, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if fenced or not line.strip():
            if current:
                blocks.append((start, current))
            current = []
            continue
        if not current:
            start = number
        current.append(line)
    if current:
        blocks.append((start, current))
    merged = []
    for start, lines in blocks:
        if merged and lines[0].lstrip().startswith("|"):
            merged[-1] = (merged[-1][0], merged[-1][1] + lines)
        else:
            merged.append((start, lines))
    return [(start, "\n".join(lines)) for start, lines in merged]


def unstamped(path):
    """(line, first number) of each paragraph of `path` with a number and unit but no commit stamp."""
    found = []
    for start, text in paragraphs(Path(path).read_text()):
        number = NUMBER_WITH_UNIT.search(text)
        if number and not STAMP.search(text) and NOT_MEASURED not in text:
            found.append((start, number.group(0)))
    return found


def markdown_files(args):
    """README.md and docs/*.md under a root, or the files given."""
    if not args:
        args = ["."]
    files = []
    for arg in map(Path, args):
        files += [arg / "README.md", *sorted((arg / "docs").glob("*.md"))] if arg.is_dir() else [arg]
    return [f for f in files if f.exists()]


def main(argv):
    bad = [(f, line, n) for f in markdown_files(argv) for line, n in unstamped(f)]
    for f, line, number in bad:
        print(f"{f}:{line}: '{number}' without a commit stamp")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
