"""The Colab notebooks run top to bottom without errors (tiny ``ci`` budget, CPU).

Each notebook is executed with nbclient in a fresh ``python3`` (ipykernel) kernel, from the
``notebooks/`` folder, with ``SWARM_JAX_NOTEBOOK_BUDGET=ci`` and ``SWARM_JAX_NOTEBOOK_OUT`` set to
a temporary folder shared by the three runs, in order, so notebook 02 reloads the checkpoint
written by notebook 01, as a user would. The notebooks assert their own physics (``check`` cells
at 5 standard errors, checkpoint round trips, GSF round trips), so "no cell raised" is a real
test. A second test checks that each committed notebook has the cells of its source, the
jupytext percent-format ``notebooks/<name>.py`` next to it (the sources are the truth; the
``.ipynb`` are generated: ``jupytext --update --to ipynb notebooks/0*.py``), and carries no outputs.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = REPO / "notebooks"
NOTEBOOKS = ("01_quickstart.ipynb", "02_reload_and_simulate.ipynb", "03_physics_checks.ipynb")
CELL_TIMEOUT_S = 600


def test_committed_notebooks_are_their_sources_and_clean():
    jupytext = pytest.importorskip("jupytext")
    sources = sorted(p.stem for p in NOTEBOOK_DIR.glob("[0-9]*.py"))
    assert sources == sorted(Path(n).stem for n in NOTEBOOKS), (
        "every notebooks/NN_*.py source has its .ipynb, listed in NOTEBOOKS, and vice versa")
    for name in NOTEBOOKS:
        committed = nbformat.read(NOTEBOOK_DIR / name, as_version=4)
        source = jupytext.read(NOTEBOOK_DIR / f"{Path(name).stem}.py")
        assert ([(c.cell_type, c.source) for c in committed.cells]
                == [(c.cell_type, c.source) for c in source.cells]), (
            f"{name} differs from its source {Path(name).stem}.py: "
            "jupytext --update --to ipynb notebooks/0*.py")
        assert committed.metadata.get("accelerator") == "GPU", f"{name}: Colab's GPU metadata"
        for cell in committed.cells:
            if cell.cell_type == "code":
                assert cell.outputs == [] and cell.execution_count is None, (
                    f"{name}: commit notebooks without outputs")


def test_the_set_up_cell_is_the_same_in_every_notebook():
    """Each notebook carries the same set-up cell (a Colab notebook must stand alone, so it is
    repeated, not imported): edit it in one source, copy it to the others."""
    jupytext = pytest.importorskip("jupytext")
    first_code = [next(c.source for c in jupytext.read(NOTEBOOK_DIR / f"{Path(n).stem}.py").cells
                       if c.cell_type == "code") for n in NOTEBOOKS]
    assert first_code[0].startswith("# Set-up.") and len(set(first_code)) == 1


@pytest.fixture(scope="module")
def notebook_out(tmp_path_factory):
    return tmp_path_factory.mktemp("notebooks_out")


@pytest.mark.slow
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs(name, notebook_out, monkeypatch, jax_cache_env):
    # The kernel inherits this process's environment. It runs to its end, so the notebook's
    # enable_compilation_cache() may use this worker's cache (02 then loads 01's programs).
    for var, value in jax_cache_env.items():
        monkeypatch.setenv(var, value)
    monkeypatch.setenv("SWARM_JAX_NOTEBOOK_BUDGET", "ci")
    monkeypatch.setenv("SWARM_JAX_NOTEBOOK_OUT", str(notebook_out))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        [str(REPO)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    nb = nbformat.read(NOTEBOOK_DIR / name, as_version=4)
    client = nbclient.NotebookClient(
        nb, kernel_name="python3", timeout=CELL_TIMEOUT_S,
        resources={"metadata": {"path": str(NOTEBOOK_DIR)}},
    )
    t0 = time.perf_counter()
    try:
        client.execute()
    except nbclient.exceptions.CellExecutionError as err:
        pytest.fail(f"{name}: a cell failed:\n{err}")
    print(f"{name}: {time.perf_counter() - t0:.1f} s")
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors, f"{name}: error outputs {errors}"
    assert list(notebook_out.iterdir()), "the notebook wrote nothing under SWARM_JAX_NOTEBOOK_OUT"
