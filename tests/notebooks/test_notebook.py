"""The Colab demo notebook: committed without outputs, and every cell runs (small CI mode).

The execution test starts a real Jupyter kernel (``python3``, which jupyter_client maps to this
interpreter) with ``SLEEPJAX_DEMO_SMALL=1``: two short training runs, streaming inference
and the latency comparison, at reduced sizes.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="nbformat is in the package's [test] extras")

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "sleepjax_demo.ipynb"
CELL_TIMEOUT_S = 600


def _read():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    return nb


def _text_outputs(cell) -> str:
    parts = []
    for output in cell.get("outputs", []):
        if output.output_type == "stream":
            parts.append(output.text)
        elif output.output_type in ("execute_result", "display_data"):
            parts.append(output.get("data", {}).get("text/plain", ""))
    return "".join(parts)


def _images(cells) -> int:
    return sum("image/png" in output.get("data", {})
               for cell in cells for output in cell.get("outputs", []))


def test_committed_notebook_has_outputs_cleared():
    nb = _read()
    code_cells = [c for c in nb.cells if c.cell_type == "code"]
    assert code_cells, "the notebook has no code cells"
    dirty = [i for i, c in enumerate(nb.cells)
             if c.cell_type == "code" and (c.outputs or c.execution_count is not None)]
    assert not dirty, f"cells {dirty} have outputs or execution counts; clear them before committing"
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3"


@pytest.mark.slow
def test_notebook_runs_in_small_mode(monkeypatch):
    nbclient = pytest.importorskip("nbclient", reason="nbclient is in the package's [test] extras")
    pytest.importorskip("ipykernel", reason="ipykernel is in the package's [test] extras")
    monkeypatch.setenv("SLEEPJAX_DEMO_SMALL", "1")   # inherited by the kernel and its children
    # CI speed only: at XLA backend optimisation level 0 the CPU compilations (which dominate
    # the small mode: two training jobs of a few steps) take about 30% less CPU time.
    flags = os.environ.get("XLA_FLAGS", "")
    monkeypatch.setenv("XLA_FLAGS", f"{flags} --xla_backend_optimization_level=0".strip())
    nb = _read()
    client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=CELL_TIMEOUT_S,
                                     resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    client.execute()   # raises CellExecutionError naming the cell if any cell fails

    code_cells = [c for c in nb.cells if c.cell_type == "code"]
    errors = [o for c in code_cells for o in c.outputs if o.output_type == "error"]
    assert not errors
    text = "\n".join(_text_outputs(c) for c in code_cells)
    # The kernel ran this interpreter (so it saw this environment's sleepjax).
    assert f"python: {sys.executable}" in text, (
        "the python3 kernel did not run this interpreter; a user-level kernelspec may shadow it")
    assert "mode: small" in text
    assert "both runs done" in text
    # Sleeps fire exactly when each of the four 24-token states fills its window.
    assert text.count("sleeps fired after tokens [23, 47, 71, 95]") == 2
    assert "streaming exact-match accuracy" in text
    assert "full attention decode" in text
    assert _images(code_cells) == 2   # accuracy curves, latency plot
