"""Offline guards and a random-weight Inception file for the FID/IS tests."""

from __future__ import annotations

import urllib.request
from pathlib import Path
from unittest import mock

import pytest
import torch


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """An empty $TORCH_HOME, and any attempt to download fails the test."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))

    def no_network(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args[:1]}")

    import torch_fidelity.feature_extractor_inceptionv3 as fe
    import torchvision.models._api as tv_api

    # Patch every name the libraries download through (they import the function by name).
    for module in (torch.hub, fe, tv_api):
        monkeypatch.setattr(module, "load_state_dict_from_url", no_network)
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    return tmp_path / "torch_home" / "hub" / "checkpoints"


@pytest.fixture(scope="session")
def random_inception(tmp_path_factory) -> Path:
    """A torch-fidelity FeatureExtractorInceptionV3 state dict (the real file format) with kaiming-normal
    random weights (plumbing tests only: with the default init the features collapse and FID ~ 0 for
    any pair)."""
    import torch_fidelity.feature_extractor_inceptionv3 as fe

    path = tmp_path_factory.mktemp("inception") / "random-inception.pth"
    # Without a weights path the constructor would download: patch that out and skip the loading.
    with mock.patch.object(fe, "load_state_dict_from_url", return_value={}), \
            mock.patch.object(fe.FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd: None):
        net = fe.FeatureExtractorInceptionV3("inception-v3-compat", ["2048", "logits_unbiased"])
    g = torch.Generator().manual_seed(0)
    for m in net.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
            torch.nn.init.kaiming_normal_(m.weight, generator=g)
            if m.bias is not None:
                torch.nn.init.zeros_(m.bias)
    torch.save(net.state_dict(), path)
    return path
