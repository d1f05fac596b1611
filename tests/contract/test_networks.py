"""Contract of every registered network: with its default options it maps (x_t, sigma) to the shape
of x_t, differentiably, for a batch of noise levels."""

import pytest
import torch

from emprior.nets import NETS, build_denoiser

SHAPES = [(1, 8, 8), (3, 16, 16), (5,), (3, 32, 32)]  # 32x32: the ADM's 6 levels (5 halvings)


@pytest.mark.parametrize("name", NETS.names())
def test_output_shape_and_gradient(name):
    for shape in SHAPES:
        try:
            net = build_denoiser({"net": name}, shape)
        except Exception:  # noqa: BLE001 - try the next shape this architecture may accept
            continue
        x = torch.randn(4, *shape, requires_grad=True)
        out = net(x, torch.tensor([0.01, 0.1, 1.0, 10.0]))
        assert out.shape == x.shape and torch.isfinite(out).all()
        out.square().sum().backward()
        assert x.grad is not None and torch.isfinite(x.grad).all()
        return
    pytest.fail(f"network {name!r} accepts none of the shapes tried")
