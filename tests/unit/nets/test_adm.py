"""The guided-diffusion ADM of DPS's ffhq_10m.pt: key names/shapes, forward, strict loading."""

from pathlib import Path

import numpy as np
import pytest
import torch

from emprior.core.errors import ArtifactError
from emprior.nets.adm import ADMUNet, adm_config, file_sha256, load_guided_diffusion, state_shapes, timestep_embedding

KEYS = Path(__file__).parents[2] / "data" / "adm_ffhq_keys.txt"  # from scripts/adm_reference_keys.py
SMALL = adm_config(image_size=32, model_channels=32, channel_mult=(1, 2), attention_resolutions=(16,),
                   num_head_channels=16)


def _reference_list():
    lines = KEYS.read_text().splitlines()
    n, params = map(int, lines[-1].lstrip("# ").split())
    rows = [ln.split("\t") for ln in lines[:-1]]
    return [(k, tuple(int(s) for s in shape.split("x"))) for k, shape in rows], n, params


def test_full_adm_has_exactly_the_reference_keys_and_shapes():
    ref, n, params = _reference_list()
    net = ADMUNet()
    got = state_shapes(net)
    assert (n, params) == (362, 93_563_910)
    assert got == ref
    assert sum(p.numel() for p in net.parameters()) == params


def test_timestep_embedding_is_cos_then_sin():
    e = timestep_embedding(torch.tensor([0.0, 3.0]), 8)
    f = torch.tensor([1.0, 10 ** -0.25, 10 ** -0.5, 10 ** -0.75]) ** 4  # 10000^(-k/4)
    torch.testing.assert_close(e[1], torch.cat([torch.cos(3 * f), torch.sin(3 * f)]))
    torch.testing.assert_close(e[0], torch.cat([torch.ones(4), torch.zeros(4)]))


def test_small_adm_forward_shape_and_zero_init_output():
    net = ADMUNet(SMALL).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = net(x, torch.tensor([0, 999]))
        assert out.shape == (2, 6, 32, 32)
        assert torch.count_nonzero(out) == 0  # zero-initialised output conv, as the reference
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
        a, b = net(x, torch.tensor([10, 10])), net(x, 10)
    torch.testing.assert_close(a, b)  # a scalar timestep is broadcast
    assert a.abs().max() > 0 and torch.isfinite(a).all()


def test_loader_strict_roundtrip_sha_and_one_line_errors(tmp_path):
    net = ADMUNet(SMALL)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p))
    path = tmp_path / "ck.pt"
    torch.save(net.state_dict(), path)
    got = load_guided_diffusion(path, sha256=file_sha256(path), cfg=SMALL)
    assert not got.training
    for (k, v), (k2, v2) in zip(net.state_dict().items(), got.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(v, v2)
    with pytest.raises(ArtifactError, match=r"^ffhq_benchmark.checkpoint: .*not found; download ffhq_10m.pt"):
        load_guided_diffusion(tmp_path / "absent.pt", key="ffhq_benchmark.checkpoint")
    with pytest.raises(ArtifactError, match="has sha256 .*, config expects 00"):
        load_guided_diffusion(path, sha256="00", cfg=SMALL)
    with pytest.raises(ArtifactError, match="unexpected|missing"):
        load_guided_diffusion(path)  # the small file against the full FFHQ architecture
    bad = dict(net.state_dict())
    bad["out.2.bias"] = torch.zeros(5)
    torch.save(bad, path)
    with pytest.raises(ArtifactError, match="does not fit the ADM: .*out.2.bias"):
        load_guided_diffusion(path, cfg=SMALL)


@pytest.mark.slow
def test_full_adm_256_forward():
    net = ADMUNet().eval()
    with torch.no_grad():
        for p in net.out.parameters():
            p.normal_(0, 0.01)
        out = net(torch.randn(1, 3, 256, 256), torch.tensor([500]))
    assert out.shape == (1, 6, 256, 256) and torch.isfinite(out).all() and out.abs().max() > 0


def test_adm_registered_network_builds_a_denoiser_and_maps_sigma_to_timesteps():
    from emprior.nets import build_denoiser
    from emprior.priors.adm import linear_alphas_cumprod

    d = build_denoiser({"net": "adm", "model_channels": 32, "channel_mult": [1, 2], "attention_resolutions": [8],
                        "num_head_channels": 16}, (3, 16, 16))
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        out = d(x, torch.tensor([0.5, 20.0]))
    torch.testing.assert_close(out, x / (torch.tensor([0.5, 20.0]) ** 2 + 1).view(-1, 1, 1, 1))  # zero-init output
    abar = linear_alphas_cumprod()
    seen = []
    net = d.net
    net.net.forward = lambda x, t: seen.append(t) or torch.zeros(x.shape[0], 3, *x.shape[2:])
    s = torch.as_tensor(np.sqrt((1 - abar) / abar)[[0, 37, 999]], dtype=torch.float32)
    net(x[:1].expand(3, -1, -1, -1), s)
    torch.testing.assert_close(seen[0], torch.tensor([0.0, 37.0, 999.0]), atol=1e-3, rtol=0)
