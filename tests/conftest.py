import os
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]

# Rules call `python -m emprior`: make that the interpreter running the tests (as `make test` does).
os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"

# Keep the suite light on a 2-core machine.
torch.set_num_threads(1)
torch.set_flush_denormal(True)  # as `python -m emprior` does
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture
def repo() -> Path:
    return REPO
