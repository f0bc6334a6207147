"""The kernel package is self-contained: no module of pallas_kernels imports sleepjax, so
sleepjax.ops -> pallas_kernels is the only direction and no import cycle can form."""

from __future__ import annotations

import ast
import os
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[2]
KERNELS = REPO / "pallas_kernels"


def _imported_modules(path):
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module


def test_no_module_of_pallas_kernels_imports_sleepjax():
    files = sorted(KERNELS.rglob("*.py"))
    assert len(files) >= 8, files          # api, reference, chunk_math, xla, pallas, ... found
    offenders = {str(f.relative_to(REPO)): name for f in files for name in _imported_modules(f)
                 if name == "sleepjax" or name.startswith("sleepjax.")}
    assert not offenders, f"pallas_kernels must not import sleepjax: {offenders}"


def test_importing_every_kernel_module_loads_no_sleepjax_module():
    """Also catches imports built at run time (importlib), which the AST check cannot see."""
    modules = [".".join(f.relative_to(REPO).with_suffix("").parts) for f in sorted(KERNELS.rglob("*.py"))]
    modules = [m[: -len(".__init__")] if m.endswith(".__init__") else m for m in modules]
    script = ("import importlib, sys\n"
              f"for name in {modules!r}:\n    importlib.import_module(name)\n"
              "print(sorted(m for m in sys.modules if m == 'sleepjax' or m.startswith('sleepjax.')))\n")
    env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu")
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                            timeout=300, cwd=str(REPO / "pallas_kernels"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "[]", result.stdout
