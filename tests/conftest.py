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


@pytest.fixture(scope="session")
def tiny_digits():
    """A builder ``build(folder, variants, **sections)``: config/tiny.yaml reduced to its digits experiment
    with ``variants`` (name -> variant mapping) and each ``sections`` entry merged into that experiment's
    section of the same name (e.g. ``mstep={"steps": 2}``), validated; its ``clean.h5`` and
    ``observations.h5`` are written to ``folder``. Returns the config."""
    import copy

    from emprior.config.loading import load_config, validate_config
    from emprior.core.job import Job
    from emprior.pipeline import data as data_rules

    def build(folder: Path, variants: dict, **sections: dict) -> dict:
        cfg = load_config(REPO / "config" / "tiny.yaml")
        cfg["experiments"] = {"digits": copy.deepcopy(cfg["experiments"]["digits"])}
        for key in ("fig2", "tables"):
            cfg.pop(key, None)
        exp = cfg["experiments"]["digits"]
        exp["variants"] = copy.deepcopy(variants)
        for name, values in sections.items():
            exp[name] = {**exp.get(name, {}), **values}
        validate_config(cfg)
        data_rules.dataset(Job(cfg, "digits"), str(folder / "clean.h5"))
        data_rules.observe(Job(cfg, "digits"), str(folder / "clean.h5"), str(folder / "observations.h5"))
        return cfg

    return build
