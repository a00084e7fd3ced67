"""The package as a source checkout runs it: `flowact.*` resolves to the checkout's top-level
folders when no editable install maps them (a non-editable install run from the checkout, as
in the Docker image, or `PYTHONPATH=.`)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

WITHOUT_EDITABLE_FINDER = """
import sys
sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in getattr(f, "__module__", "")]
sys.path.insert(0, ".")
import flowact, flowact.schemas, flowact.renderer.training.pipeline as pipeline
print(flowact.__file__, flowact.schemas.__file__, pipeline.__file__, sep="\\n")
"""


def test_a_checkout_without_an_editable_install_finds_every_subpackage():
    done = subprocess.run(
        [sys.executable, "-c", WITHOUT_EDITABLE_FINDER],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    paths = [Path(p).resolve() for p in done.stdout.split()]
    assert paths == [
        ROOT / "flowact" / "__init__.py",
        ROOT / "schemas" / "__init__.py",
        ROOT / "renderer" / "training" / "pipeline.py",
    ]
