"""model.pt loading (emprior.priors.checkpoint): a method's own model kind is built by the method recorded
in the file, found by name at load time; nothing in priors/ or core/ imports upwards."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from emprior.core.errors import ArtifactError
from emprior.priors.checkpoint import prior_from_checkpoint

SRC = Path(__file__).resolve().parents[3] / "src"
NET = {"net": "unet", "hid_channels": [8, 16], "hid_blocks": [1, 1], "attention_heads": [0, 2], "dropout": 0.0,
       "emb_features": 16}


def _run(code: str) -> None:
    out = subprocess.run([sys.executable, "-c", code], env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"},
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]


def test_no_upward_imports_and_plain_denoisers_load_without_any_method():
    """Importing the checkpoint loader, or Job, pulls in no EM method nor the config loader (the circle
    core.job -> config.loading -> methods -> core.job is gone); DiEM / EMDiffusion / DiffEM write kind
    'denoiser', loaded exactly as before without asking any method (one subprocess: a clean sys.modules)."""
    _run("import sys, torch\n"
         "import emprior.priors.checkpoint, emprior.core.job\n"
         "bad = [m for m in ('emprior.methods.ambient', 'emprior.methods', 'emprior.config.loading')\n"
         "       if m in sys.modules]\n"
         "assert not bad, bad\n"
         "from emprior.nets import build_denoiser\n"
         "from emprior.priors.checkpoint import prior_from_checkpoint\n"
         f"net = build_denoiser({NET!r}, (1, 8, 8))\n"
         "ck = {'kind': 'denoiser', 'x_shape': [1, 8, 8], 'net': " + repr(NET) + ", 'weights': net.state_dict()}\n"
         "p = prior_from_checkpoint(ck)\n"
         "assert all(torch.equal(v, net.state_dict()[k]) for k, v in p.module.state_dict().items())\n"
         "assert 'emprior.methods' not in sys.modules\n")


def _ambient_ckpt(**extra):
    from emprior.methods.ambient import build_ambient_denoiser

    torch.manual_seed(0)
    net = build_ambient_denoiser(NET, (1, 8, 8), 1)
    return {"kind": "ambient", "x_shape": [1, 8, 8], "net": NET, "cond_channels": 1,
            "weights": {k: v + 0.01 for k, v in net.state_dict().items()}, **extra}


def test_method_recorded_in_the_file_builds_its_network(monkeypatch):
    from emprior.methods.ambient import Ambient, AmbientDenoiser

    asked = []
    orig = Ambient.build_networks.__func__
    monkeypatch.setattr(Ambient, "build_networks", classmethod(lambda cls, ck, where: asked.append(where) or
                                                                orig(cls, ck, where)))
    ck = _ambient_ckpt(method="ambient")
    prior = prior_from_checkpoint(ck, "m.pt")
    assert asked == ["m.pt"] and isinstance(prior.module, AmbientDenoiser)
    for k, v in prior.module.state_dict().items():
        assert torch.equal(v, ck["weights"][k]), k
    # an older file without "method": the kind names the method
    assert isinstance(prior_from_checkpoint(_ambient_ckpt()).module, AmbientDenoiser)


def test_unknown_method_is_one_line():
    with pytest.raises(ArtifactError, match=r"^m\.pt: unknown model kind 'ambient' \(written by method 'nope'"):
        prior_from_checkpoint(_ambient_ckpt(method="nope"), "m.pt")
    with pytest.raises(ArtifactError, match=r"^m\.pt: EM method DiEM does not write models of kind 'ambient'"):
        prior_from_checkpoint(_ambient_ckpt(method="diem"), "m.pt")
    with pytest.raises(ArtifactError, match="lacks key 'cond_channels'"):
        prior_from_checkpoint({k: v for k, v in _ambient_ckpt().items() if k != "cond_channels"}, "m.pt")


def test_lower_layers_name_no_upper_module():
    """No import statement (lazy ones included) in core/, priors/, diffusion/ or nets/ names methods/,
    config/, pipeline/ or report/."""
    import ast

    bad = []
    for layer in ("core", "priors", "diffusion", "nets"):
        for f in sorted((SRC / "emprior" / layer).rglob("*.py")):
            for node in ast.walk(ast.parse(f.read_text())):
                names = [node.module or ""] if isinstance(node, ast.ImportFrom) else \
                    [a.name for a in node.names] if isinstance(node, ast.Import) else []
                bad += [f"{f.name}: {n}" for n in names
                        if n.split(".")[:2] in (["emprior", "methods"], ["emprior", "config"],
                                                ["emprior", "pipeline"], ["emprior", "report"])]
    assert not bad, bad
