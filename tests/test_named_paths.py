"""Every repository path that a docstring, comment or README names exists, and no docstring cites
a file that is not in the repository (the project's paper digest lives outside it)."""

from __future__ import annotations

import ast
import pathlib
import re

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
TOP_LEVEL = ("sleepjax", "pallas_kernels", "tests", "benchmarks", "experiments", "results",
             "notebooks", ".ci")
# a path: a top-level folder, then names of letters, digits, '_', '-', '.', joined by '/'
PATH = re.compile(r"(?<![\w./-])((?:%s)/[\w.-]+(?:/[\w.-]+)*)" % "|".join(map(re.escape, TOP_LEVEL)))
DOCS = ["README.md", "experiments/README.md", "benchmarks/README.md", "results/README.md",
        "benchmarks/RESULTS.md"]


def _python_text(path: pathlib.Path) -> str:
    """Docstrings and comments of a Python file (not its code: tests build paths that need not
    exist)."""
    source = path.read_text()
    parts = [line.split("#", 1)[1] for line in source.splitlines() if "#" in line]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=False)
            if doc:
                parts.append(doc)
    return "\n".join(parts)


def _texts():
    for name in DOCS:
        path = REPO / name
        if path.exists():
            yield name, path.read_text()
    for folder in ("sleepjax", "pallas_kernels", "benchmarks", "experiments", "tests"):
        for path in sorted((REPO / folder).rglob("*.py")):
            yield str(path.relative_to(REPO)), _python_text(path)


def _named_paths(text: str):
    for match in PATH.finditer(text):
        path = match.group(1).rstrip(".,;:)`'\"")
        if "<" in path or "*" in path or "{" in path:
            continue
        yield path


def test_every_named_repository_path_exists():
    missing = sorted({f"{where}: {path}" for where, text in _texts()
                      for path in _named_paths(text)
                      if not (REPO / path).exists() and not (REPO / (path + ".py")).exists()})
    assert not missing, "named but absent:\n" + "\n".join(missing)


@pytest.mark.parametrize("stale", ["PAPER.md", "the former path", "issue 13"])
def test_no_docstring_cites_what_is_not_here(stale):
    hits = [where for where, text in _texts()
            if stale in text and where.endswith(".py") and where != "tests/test_named_paths.py"]
    assert not hits, f"{stale!r} in {hits}"
