"""PSNR / SSIM closed forms, LPIPS and FID/IS plumbing offline (random weights only inside tests)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from emprior.evaluation.metrics import MetricUnavailable, lpips_distance, psnr, ssim
from emprior.evaluation.metrics import images as im


# ---------------------------------------------------------------------------------------------
# PSNR / SSIM
# ---------------------------------------------------------------------------------------------


def test_psnr_constant_offset_closed_form():
    rng = np.random.default_rng(0)
    ref = rng.uniform(-1.5, 1.5, (3, 3, 8, 8))
    offsets = np.array([0.5, 0.1, 0.02])
    x = ref + offsets[:, None, None, None]
    expected = 20 * np.log10(4.0) - 20 * np.log10(offsets)  # MSE = d^2, L = 4 for [-2, 2]
    np.testing.assert_allclose(psnr(x, ref, 4.0), expected, rtol=1e-10)
    np.testing.assert_allclose(psnr(torch.from_numpy(x), ref, (-2.0, 2.0)), expected, rtol=1e-10)
    np.testing.assert_allclose(psnr(x, ref, (0.0, 1.0)), -20 * np.log10(offsets), rtol=1e-10)
    assert np.isposinf(psnr(ref, ref, 4.0)).all()


def test_ssim_identical_is_one():
    rng = np.random.default_rng(1)
    grey = rng.uniform(-2, 2, (4, 1, 8, 8))
    np.testing.assert_allclose(ssim(grey, grey, 4.0), 1.0, atol=1e-12)
    rgb = rng.uniform(-1, 1, (2, 3, 16, 16))
    np.testing.assert_allclose(ssim(rgb, rgb, 2.0), 1.0, atol=1e-12)


def test_ssim_constant_images_closed_form():
    # Constant images have no variance: SSIM = (2 a b + C1) / (a^2 + b^2 + C1), C1 = (0.01 L)^2.
    a, b, L = 0.7, -0.3, 4.0
    x = np.full((1, 1, 8, 8), a)
    ref = np.full((1, 1, 8, 8), b)
    c1 = (0.01 * L) ** 2
    assert ssim(x, ref, L)[0] == pytest.approx((2 * a * b + c1) / (a * a + b * b + c1), rel=1e-10)
    # 4x4 images use a 3x3 window.
    assert ssim(x[..., :4, :4], ref[..., :4, :4], L)[0] == pytest.approx((2 * a * b + c1) / (a * a + b * b + c1))


def test_ssim_is_below_one_and_ordered_by_noise():
    rng = np.random.default_rng(2)
    ref = rng.uniform(-2, 2, (1, 1, 8, 8))
    s = [ssim(ref + sd * rng.standard_normal(ref.shape), ref, 4.0)[0] for sd in (0.01, 0.3, 1.0)]
    assert 1 > s[0] > s[1] > s[2]


@pytest.mark.parametrize("x_shape, ref_shape, match", [
    ((2, 1, 8, 8), (2, 1, 8, 7), "x: shape"),
    ((2, 8, 8), (2, 8, 8), r"x: expected images of shape \(N, C, H, W\)"),
    ((2, 2, 8, 8), (2, 2, 8, 8), "C in"),
])
def test_shape_errors(x_shape, ref_shape, match):
    with pytest.raises(ValueError, match=match):
        psnr(np.zeros(x_shape), np.zeros(ref_shape), 4.0)


def test_value_range():
    assert im.value_range(4) == (-2.0, 2.0)
    assert im.value_range((0, 1)) == (0.0, 1.0)
    for bad in (0, -1, (1, 1), (0, 1, 2), float("nan")):
        with pytest.raises(ValueError, match="data_range"):
            im.value_range(bad)


# ---------------------------------------------------------------------------------------------
# Weights absent -> MetricUnavailable, no download attempted
# ---------------------------------------------------------------------------------------------


def test_unavailable_without_weights(offline):
    x = np.zeros((10, 3, 32, 32))
    res = im.missing_inception(im.inception_weights_path(None))
    assert isinstance(res, MetricUnavailable)
    assert res.reason == (f"n/a: Inception weights not found at {offline / im.INCEPTION_WEIGHTS} (no internet); "
                          f"set metrics.inception_weights to a copy of {im.INCEPTION_URL} or place it there")
    res = lpips_distance(x, x)
    assert isinstance(res, MetricUnavailable)
    assert str(offline / "alexnet-owt-7be5be79.pth") in res.reason and "metrics.lpips_weights_dir" in res.reason
    assert im.inception_weights_path(offline / "elsewhere.pth") == offline / "elsewhere.pth"


def _alexnet_features(path: Path, seed: int = 0) -> dict[str, torch.Tensor]:
    """A torchvision-format AlexNet state dict (features only: the classifier is never used)."""
    import torchvision

    torch.manual_seed(seed)
    state = {k: v for k, v in torchvision.models.alexnet().state_dict().items() if k.startswith("features.")}
    torch.save(state, path)
    return state


def test_lpips_rejects_backbone_that_is_not_the_published_file(offline):
    offline.mkdir(parents=True)
    _alexnet_features(offline / "alexnet-owt-7be5be79.pth")
    x = np.zeros((2, 3, 32, 32))
    res = lpips_distance(x, x)
    assert isinstance(res, MetricUnavailable) and "is not the published torchvision file" in res.reason


def test_lpips_loads_every_backbone_tensor_from_file(offline, tmp_path, monkeypatch):
    # Name the file after its own sha256 prefix (the torch.hub convention) so the check passes.
    folder = tmp_path / "weights"
    folder.mkdir()
    state = _alexnet_features(folder / "tmp.pth")
    digest = hashlib.sha256((folder / "tmp.pth").read_bytes()).hexdigest()
    name = f"alexnet-owt-{digest[:8]}.pth"
    (folder / "tmp.pth").rename(folder / name)
    monkeypatch.setitem(im.LPIPS_BACKBONES, "alex", name)
    model = im.lpips_model("alex", weights_dir=folder)
    assert not isinstance(model, MetricUnavailable)
    torch.testing.assert_close(model.net.slice1[0].weight, state["features.0.weight"], rtol=0, atol=0)
    torch.testing.assert_close(getattr(model.net.slice5, "10").bias, state["features.10.bias"], rtol=0, atol=0)

    rng = np.random.default_rng(0)
    x = rng.uniform(-2, 2, (3, 3, 32, 32))
    y = rng.uniform(-2, 2, (3, 3, 32, 32))
    d = lpips_distance(x, y, weights_dir=folder, data_range=4.0)
    assert d.shape == (3,) and np.all(d > 0)
    np.testing.assert_allclose(lpips_distance(x, x, weights_dir=folder, data_range=4.0), 0, atol=1e-7)
    np.testing.assert_allclose(d, im.lpips_from_model(model, y, x, data_range=4.0), rtol=1e-5)  # symmetric
    # The range is mapped onto [-1, 1]: x in [-2, 2] with width 4 equals x / 2 with width 2.
    np.testing.assert_allclose(d, im.lpips_from_model(model, x / 2, y / 2, data_range=2.0), rtol=1e-5)

    # A file without all backbone tensors is refused rather than half-loaded.
    del state["features.8.weight"]
    torch.save(state, folder / name)
    digest = hashlib.sha256((folder / name).read_bytes()).hexdigest()
    name2 = f"alexnet-owt-{digest[:8]}.pth"
    (folder / name).rename(folder / name2)
    monkeypatch.setitem(im.LPIPS_BACKBONES, "alex", name2)
    res = im.lpips_model("alex", weights_dir=folder)
    assert isinstance(res, MetricUnavailable) and "no 'features.8.weight'" in res.reason


def test_lpips_plumbing_with_random_trunk():
    """Random backbone (test only): grey images equal their RGB repetition, identical images give 0."""
    import lpips

    torch.manual_seed(0)
    model = lpips.LPIPS(net="alex", pnet_rand=True, verbose=False)
    rng = np.random.default_rng(0)
    g1, g2 = rng.uniform(0, 1, (2, 2, 1, 32, 32))
    d = im.lpips_from_model(model, g1, g2, data_range=(0, 1))
    np.testing.assert_allclose(d, im.lpips_from_model(model, g1.repeat(3, 1), g2.repeat(3, 1), data_range=(0, 1)))
    np.testing.assert_allclose(im.lpips_from_model(model, g1, g1, data_range=(0, 1)), 0, atol=1e-7)
    # Values outside the range are clipped before the network sees them.
    np.testing.assert_allclose(im.lpips_from_model(model, g1 + 5 * (g1 > 0.5), g2, data_range=(0, 1)),
                               im.lpips_from_model(model, np.where(g1 > 0.5, 1.0, g1), g2, data_range=(0, 1)),
                               rtol=1e-6)
    with pytest.raises(ValueError, match="8x8 do not fit the LPIPS backbone"):
        im.lpips_from_model(model, g1[..., :8, :8], g2[..., :8, :8], data_range=(0, 1))


# ---------------------------------------------------------------------------------------------
# FID / IS
# ---------------------------------------------------------------------------------------------


def test_uint8_images_quantisation():
    x = np.array([-2.0, 0.0, 2.0, 3.0, -9.0, 1.0]).reshape(1, 1, 2, 3)
    t = im.Uint8Images(x, 4.0)[0]
    assert t.dtype == torch.uint8 and t.shape == (3, 2, 3)
    assert t[0].flatten().tolist() == [0, 128, 255, 255, 0, 191]  # rint(255 (x + 2) / 4), clipped
    assert torch.equal(t[0], t[2])
