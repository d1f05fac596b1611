"""Tests of emprior.nets: noise embedding, MLP, U-Net, pixel-shuffle wrapper and build_denoiser."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from emprior.diffusion import PreconditionedDenoiser
from emprior.core.errors import ConfigError
from emprior.nets import MLP, PixelShuffleWrapper, UNet, build_denoiser, noise_embedding


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def randomize_(module: nn.Module, seed: int = 0) -> None:
    """Give every parameter (including the zero-initialised ones) small random values."""
    g = gen(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(0.1 * torch.randn(p.shape, generator=g))


# --- noise embedding ----------------------------------------------------------------------------


def test_noise_embedding_is_a_smooth_one_hot():
    f = 11
    emb = noise_embedding(torch.tensor([1e-3, 1e2]), f)
    assert emb.shape == (2, f)
    # At the end points the first/last bump is exactly 1 and the neighbour is exp(-1/2).
    assert emb[0, 0].item() == pytest.approx(1.0, abs=1e-6)
    assert emb[0, 1].item() == pytest.approx(math.exp(-0.5), rel=1e-5)
    assert emb[1, -1].item() == pytest.approx(1.0, abs=1e-6)
    assert emb[0].argmax().item() == 0 and emb[1].argmax().item() == f - 1
    # Halfway between two centres both bumps equal exp(-1/8).
    w = (math.log(1e2) - math.log(1e-3)) / (f - 1)
    mid = math.exp(math.log(1e-3) + 3.5 * w)
    e = noise_embedding(torch.tensor(mid, dtype=torch.float64), f)
    assert e.shape == (1, f)
    assert e[0, 3].item() == pytest.approx(math.exp(-1 / 8), rel=1e-10)
    assert e[0, 4].item() == pytest.approx(math.exp(-1 / 8), rel=1e-10)
    # Smooth in sigma: a 1 % change in sigma moves the code by little.
    s = torch.logspace(-3, 2, 50)
    delta = (noise_embedding(s * 1.01, f) - noise_embedding(s, f)).abs().max()
    assert delta < 0.01
    with pytest.raises(ValueError, match="features"):
        noise_embedding(s, 0)


# --- MLP ----------------------------------------------------------------------------------------


def test_mlp_shapes_zero_output_and_conditioning():
    net = MLP(4, hidden=(32, 32, 32), emb_features=16)
    x = torch.randn(7, 4, generator=gen(0))
    assert torch.equal(net(x, torch.full((7,), 0.5)), torch.zeros(7, 4))  # zero-initialised output
    # Table 2 layout: Linear, SiLU, LayerNorm (x3) then Linear; input = features + emb_features.
    kinds = [type(m) for m in net.layers]
    assert kinds == [nn.Linear, nn.SiLU, nn.LayerNorm] * 3 + [nn.Linear]
    assert net.layers[0].in_features == 4 + 16
    randomize_(net)
    a, b = net(x, 0.01), net(x, 10.0)
    assert a.shape == (7, 4) and not torch.allclose(a, b)  # the noise level matters
    assert torch.equal(net(x, torch.tensor(0.01)), a)
    # Event shapes other than (features,) are flattened and restored.
    assert net(torch.randn(3, 2, 2), 1.0).shape == (3, 2, 2)
    with pytest.raises(ValueError, match="x"):
        net(torch.randn(3, 5), 1.0)


# --- U-Net --------------------------------------------------------------------------------------


def test_unet_shapes_three_levels_with_attention():
    net = UNet(
        3,
        3,
        hid_channels=(16, 32, 32),
        hid_blocks=(1, 1, 1),
        attention_heads=(0, 0, 2),
        dropout=0.1,
        emb_features=32,
    )
    x = torch.randn(2, 3, 32, 32, generator=gen(1))
    out = net(x, torch.tensor([0.01, 10.0]))
    assert out.shape == (2, 3, 32, 32)
    assert torch.equal(out, torch.zeros_like(out))  # zero-initialised output conv
    attn = [m for m in net.modules() if isinstance(m, nn.MultiheadAttention)]
    assert len(attn) == 2 and all(m.num_heads == 2 for m in attn)  # one per block at the last level


def test_unet_small_and_odd_sizes():
    net = UNet(
        1, 2, hid_channels=(8, 16), hid_blocks=(1, 1), attention_heads=(0, 2), dropout=0.0, emb_features=16
    )
    assert net(torch.randn(4, 1, 8, 8), 0.3).shape == (4, 2, 8, 8)
    assert net(torch.randn(4, 1, 7, 9), 0.3).shape == (4, 2, 7, 9)  # odd sizes survive down/up


def test_unet_gradients_reach_every_parameter_and_eval_is_deterministic():
    net = UNet(
        1, 1, hid_channels=(8, 16), hid_blocks=(1, 1), attention_heads=(0, 2), dropout=0.1, emb_features=16
    )
    randomize_(net, 3)
    x = torch.randn(3, 1, 8, 8, generator=gen(4))
    net(x, torch.tensor([0.1, 1.0, 10.0])).square().mean().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, f"no gradient reaches {name}"
    net.eval()
    assert torch.equal(net(x, 1.0), net(x, 1.0))
    net.train()
    assert not torch.equal(net(x, 1.0), net(x, 1.0))  # dropout active in training


def test_unet_rejects_bad_arguments():
    with pytest.raises(ValueError, match="hid_blocks"):
        UNet(1, 1, hid_channels=(8, 16), hid_blocks=(1,), attention_heads=(0, 0))
    with pytest.raises(ValueError, match="attention_heads"):
        UNet(1, 1, hid_channels=(8, 10), hid_blocks=(1, 1), attention_heads=(0, 4))
    with pytest.raises(ValueError, match="kernel_size"):
        UNet(1, 1, hid_channels=(8,), hid_blocks=(1,), attention_heads=(0,), kernel_size=4)


# --- pixel shuffle ------------------------------------------------------------------------------


def test_pixel_shuffle_wrapper_round_trip():
    seen = {}

    class Echo(nn.Module):
        def forward(self, x, sigma):
            seen["shape"] = tuple(x.shape)
            return x

    wrap = PixelShuffleWrapper(Echo(), 4)
    x = torch.randn(2, 1, 32, 32, generator=gen(5))
    assert torch.equal(wrap(x, 1.0), x)  # pixel_shuffle inverts pixel_unshuffle exactly
    assert seen["shape"] == (2, 16, 8, 8)
    # Pixel (h, w) lands in channel (h % 4) * 4 + (w % 4) at position (h // 4, w // 4).
    u = torch.nn.functional.pixel_unshuffle(x, 4)
    assert u[1, 2 * 4 + 3, 5, 6] == x[1, 0, 5 * 4 + 2, 6 * 4 + 3]
    unet = UNet(16, 16, hid_channels=(8, 16), hid_blocks=(1, 1), attention_heads=(0, 0), emb_features=8)
    assert PixelShuffleWrapper(unet, 4)(x, torch.ones(2)).shape == (2, 1, 32, 32)
    with pytest.raises(ValueError, match="factor"):
        wrap(torch.randn(1, 1, 30, 32), 1.0)


# --- build_denoiser -----------------------------------------------------------------------------


def test_build_denoiser_mlp_and_unet_start_as_standard_normal_denoiser():
    d = build_denoiser({"net": "mlp", "hidden": [64, 64, 64], "emb_features": 16}, (5,))
    assert isinstance(d, PreconditionedDenoiser) and isinstance(d.net, MLP)
    x = torch.randn(6, 5, generator=gen(6))
    s = torch.logspace(-2, 1, 6)
    assert torch.equal(d(x, s), x / (s[:, None] ** 2 + 1))

    cfg = {
        "net": "unet",
        "hid_channels": [8, 16],
        "hid_blocks": [1, 1],
        "attention_heads": [0, 2],
        "dropout": 0.0,
        "emb_features": 16,
        "pixel_shuffle": 1,
    }
    d = build_denoiser(cfg, (1, 8, 8))
    assert isinstance(d.net, UNet)
    x = torch.randn(3, 1, 8, 8, generator=gen(7))
    assert torch.equal(d(x, 2.0), x / 5.0)

    d = build_denoiser(dict(cfg, pixel_shuffle=4), (1, 32, 32))
    assert isinstance(d.net, PixelShuffleWrapper) and d.net.net.inp.in_channels == 16
    assert d(torch.randn(2, 1, 32, 32), 1.0).shape == (2, 1, 32, 32)


@pytest.mark.parametrize(
    "cfg, shape, key",
    [
        ({"net": "mlp", "hidden": []}, (4,), "hidden"),
        ({"net": "mlp", "hidden": [0, 8]}, (4,), "hidden"),
        ({"net": "mlp", "emb_features": 0}, (4,), "emb_features"),
        ({"net": "mlp", "widht": 3}, (4,), "widht"),
        ({"net": "transformer"}, (4,), "net"),
        ({"net": "unet", "hid_channels": [8, 16], "hid_blocks": [1]}, (1, 8, 8), "hid_blocks"),
        (
            {"net": "unet", "hid_channels": [8], "hid_blocks": [1], "attention_heads": [3]},
            (1, 8, 8),
            "attention_heads",
        ),
        ({"net": "unet", "dropout": 1.5}, (1, 8, 8), "dropout"),
        ({"net": "unet", "kernel_size": 2}, (1, 8, 8), "kernel_size"),
        ({"net": "unet", "pixel_shuffle": 3}, (1, 8, 8), "pixel_shuffle"),
        ({"net": "unet"}, (64,), "x_shape"),
        ({"net": "mlp"}, (0,), "x_shape"),
    ],
)
def test_build_denoiser_rejects_bad_config(cfg, shape, key):
    with pytest.raises(ValueError, match=key) as info:
        build_denoiser(cfg, shape)
    assert isinstance(info.value, ConfigError)  # the CLI prints it as a one-line error
    assert "\n" not in str(info.value)


def test_channel_norm_standardises_each_pixel_over_channels():
    """_channel_norm (F.layer_norm on a channels-last view) equals (x - mean_c) / sqrt(var_c + eps)
    per pixel, computed here in float64 the long way."""
    from emprior.nets.unet import _channel_norm

    x = torch.randn(3, 5, 4, 6, generator=torch.Generator().manual_seed(0)) * 3 + 1
    y = _channel_norm(x)
    xd = x.double()
    ref = (xd - xd.mean(1, keepdim=True)) / torch.sqrt(xd.var(1, keepdim=True, unbiased=False) + 1e-5)
    assert y.shape == x.shape
    torch.testing.assert_close(y.double(), ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(y.mean(1), torch.zeros(3, 4, 6), atol=1e-5, rtol=0)
