"""notebooks/results.ipynb and notebooks/inspect_model.ipynb run without errors (nbmake, as a user would run
them with pytest --nbmake) on the results table and a BTN run folder of a real tiny local sweep."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from sweep_helpers import REPO

NOTEBOOKS = ("results.ipynb", "inspect_model.ipynb")


# Includes the session's sweep when this test runs first (a few minutes on a busy machine).
@pytest.mark.timeout(900)
def test_the_notebooks_execute_on_a_real_sweep(tiny_lambda_sweep, tmp_path, tmp_path_factory):
    folder, _ = tiny_lambda_sweep
    environment = {
        **os.environ,
        "FER_LIGHTNING_RESULTS": str(folder / "results.csv"),
        "FER_LIGHTNING_FIGURES": str(tmp_path / "figures"),
        "FER_LIGHTNING_RUN_DIR": str(folder / "run-002"),
        "FER_LIGHTNING_CACHE": str(tmp_path_factory.getbasetemp() / "fer_lightning_cache"),
    }
    command = [
        sys.executable,
        "-m",
        "pytest",
        "--nbmake",
        "--nbmake-timeout=300",
        "-p",
        "no:cacheprovider",
        "-q",
    ]
    done = subprocess.run(
        [*command, *(str(REPO / "notebooks" / name) for name in NOTEBOOKS)],
        cwd=REPO,
        env=environment,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "2 passed" in done.stdout
    # results.ipynb drew the λ figure from the table.
    assert (tmp_path / "figures" / "accuracy_vs_lambda.png").is_file()
