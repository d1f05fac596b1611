"""Image quality metrics: PSNR, SSIM (scikit-image), LPIPS (lpips), and the pieces FID / IS (torch-fidelity,
emprior.evaluation.metrics.fid_reference) share: the weights path, the missing-weights reason, uint8 images.

Images are (N, C, H, W) arrays (numpy or torch) with C = 1 (grey) or 3 (RGB). ``data_range`` is
either a number r, meaning values in [-r/2, r/2] (r = 4 for the DiEM [-2, 2] images, 2 for [-1, 1]),
or an explicit pair (lo, hi), e.g. (0, 1) for the [0, 1]-clipped images of the MMPS benchmark.

PSNR and SSIM are computed on the values as given. LPIPS and FID/IS clip to the range first (FID/IS
quantise to uint8, as torch-fidelity expects), and repeat grey images to 3 channels.

The pretrained networks cannot be downloaded here, so every function that needs weights looks for
the file *before* calling a library that would try to download it, and returns
:class:`MetricUnavailable` (never a number from random weights) when the file is missing or is not
the published one.
"""

from __future__ import annotations

import contextlib
import io
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from emprior.core.digest import sha256_file

# torch-fidelity's port of the TF Inception graph used for FID/IS (2015-12-05), and its sha256
# (the file name carries its first 8 hex digits, the torch.hub convention).
INCEPTION_WEIGHTS = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_SHA256 = "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2"
INCEPTION_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{INCEPTION_WEIGHTS}"
# torchvision ImageNet backbones used by LPIPS; the 8 hex digits are the sha256 prefix torch.hub checks.
LPIPS_BACKBONES = {
    "alex": "alexnet-owt-7be5be79.pth",
    "vgg": "vgg16-397923af.pth",
    "squeeze": "squeezenet1_1-b8a52dc0.pth",
}


@dataclass(frozen=True)
class MetricUnavailable:
    """A metric that could not be computed honestly (e.g. missing weights); ``reason`` says why."""

    reason: str

    def __str__(self) -> str:
        return self.reason


# ---------------------------------------------------------------------------------------------
# Input handling
# ---------------------------------------------------------------------------------------------

def _as_images(x: Any, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"{name}: expected images of shape (N, C, H, W) with C in (1, 3), got {x.shape}")
    if x.shape[0] == 0:
        raise ValueError(f"{name}: no images (shape {x.shape})")
    if not np.issubdtype(x.dtype, np.number):
        raise ValueError(f"{name}: expected a numeric array, got dtype {x.dtype}")
    return x


def _pair(x: Any, ref: Any) -> tuple[np.ndarray, np.ndarray]:
    x, ref = _as_images(x, "x"), _as_images(ref, "ref")
    if x.shape != ref.shape:
        raise ValueError(f"x: shape {x.shape} differs from ref's {ref.shape}")
    return x.astype(np.float64), ref.astype(np.float64)


def value_range(data_range: float | tuple[float, float] | list[float]) -> tuple[float, float]:
    """(lo, hi) from a width r (values in [-r/2, r/2]) or an explicit (lo, hi) pair."""
    if isinstance(data_range, (tuple, list)):
        if len(data_range) != 2:
            raise ValueError(f"data_range: expected a number or a pair (lo, hi), got {data_range!r}")
        lo, hi = float(data_range[0]), float(data_range[1])
    else:
        r = float(data_range)
        lo, hi = -r / 2, r / 2
    if not (math.isfinite(lo) and math.isfinite(hi) and hi > lo):
        raise ValueError(f"data_range: must be a positive width or a pair lo < hi, got {data_range!r}")
    return lo, hi


def _width(data_range: float | tuple[float, float] | list[float]) -> float:
    lo, hi = value_range(data_range)
    return hi - lo


def _rgb(x: torch.Tensor) -> torch.Tensor:
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


# ---------------------------------------------------------------------------------------------
# PSNR / SSIM
# ---------------------------------------------------------------------------------------------

def psnr(x: Any, ref: Any, data_range: float | tuple[float, float]) -> np.ndarray:
    """Per-image PSNR in dB, (N,): 10 log10(L^2 / MSE(x_i, ref_i)) with L the range's width.

    Identical images give +inf.
    """
    from skimage.metrics import peak_signal_noise_ratio

    x, ref = _pair(x, ref)
    width = _width(data_range)
    with np.errstate(divide="ignore"):
        return np.array([peak_signal_noise_ratio(r, xi, data_range=width) for xi, r in zip(x, ref)])


def ssim(x: Any, ref: Any, data_range: float | tuple[float, float]) -> np.ndarray:
    """Per-image SSIM (Wang et al. 2004), (N,), averaged over channels.

    scikit-image's default uniform 7x7 window with C1 = (0.01 L)^2, C2 = (0.03 L)^2; the window
    shrinks to the largest odd size <= min(H, W) for small images (e.g. 7 for 8x8 digits, 3 for 4x4).
    """
    from skimage.metrics import structural_similarity

    x, ref = _pair(x, ref)
    h, w = x.shape[-2:]
    win = min(7, h, w)
    win -= 1 - win % 2  # odd
    if win < 3:
        raise ValueError(f"x: images of size {h}x{w} are too small for SSIM (need at least 3x3)")
    width = _width(data_range)
    return np.array([structural_similarity(r, xi, data_range=width, channel_axis=0, win_size=win)
                     for xi, r in zip(x, ref)])


# ---------------------------------------------------------------------------------------------
# Weight files
# ---------------------------------------------------------------------------------------------

def checkpoints_dir() -> Path:
    """$TORCH_HOME/hub/checkpoints (default ~/.cache/torch/hub/checkpoints), where torch.hub caches."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def inception_weights_path(configured: str | Path | None = None) -> Path:
    """The Inception weights file FID/IS use: ``metrics.inception_weights`` if set, else torch.hub's cache."""
    return Path(configured) if configured is not None else checkpoints_dir() / INCEPTION_WEIGHTS


def missing_inception(path: str | Path) -> MetricUnavailable:
    """The one line a run without the Inception weights records instead of FID/IS."""
    return MetricUnavailable(f"n/a: Inception weights not found at {path} (no internet); set metrics.inception_weights "
                             f"to a copy of {INCEPTION_URL} or place it there")


# ---------------------------------------------------------------------------------------------
# LPIPS
# ---------------------------------------------------------------------------------------------

def _load_backbone(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Copy torchvision ``features.<i>.<param>`` weights into an ``lpips.LPIPS`` trunk.

    lpips splits ``torchvision.models.<net>().features`` into ``net.slice<k>`` keeping each layer's
    index ``i`` as its name, so the keys map one to one. Every trunk parameter must be found: a
    partially loaded (partly random) backbone would give a meaningless number.
    """
    targets: dict[str, torch.Tensor] = {}
    for sl in model.net.children():
        for index, layer in sl.named_children():
            for pname, param in layer.named_parameters():
                targets[f"features.{index}.{pname}"] = param
    missing = sorted(set(targets) - set(state))
    if missing:
        raise ValueError(f"{source}: no '{missing[0]}' ({len(missing)} backbone tensors missing)")
    with torch.no_grad():
        for key, param in targets.items():
            if tuple(state[key].shape) != tuple(param.shape):
                raise ValueError(f"{source}: '{key}' has shape {tuple(state[key].shape)}, "
                                 f"expected {tuple(param.shape)}")
            param.copy_(state[key])


def lpips_model(net: str = "alex", weights_dir: str | Path | None = None) -> torch.nn.Module | MetricUnavailable:
    """An ``lpips.LPIPS`` model with the published linear heads and the ImageNet backbone read from
    ``weights_dir`` (default $TORCH_HOME/hub/checkpoints), or :class:`MetricUnavailable`.

    The trunk is built empty (``pnet_rand=True`` only so that torchvision does not try to download)
    and then *every* backbone tensor is overwritten from the verified file.
    """
    if net not in LPIPS_BACKBONES:
        raise ValueError(f"net: expected one of {sorted(LPIPS_BACKBONES)}, got {net!r}")
    folder = Path(weights_dir) if weights_dir is not None else checkpoints_dir()
    path = folder / LPIPS_BACKBONES[net]
    if not path.is_file():
        return MetricUnavailable(f"n/a: LPIPS {net} backbone weights not found at {path} (no internet); "
                                 f"place the file there or set metrics.lpips_weights_dir")
    prefix = LPIPS_BACKBONES[net].rsplit("-", 1)[1].split(".")[0]
    digest = sha256_file(path)
    if not digest.startswith(prefix):
        return MetricUnavailable(f"n/a: {path} is not the published torchvision file "
                                 f"(sha256 {digest[:12]}..., expected {prefix}...)")
    import lpips

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for corrupt files
        return MetricUnavailable(f"n/a: unreadable LPIPS backbone {path} ({str(exc).splitlines()[0]})")
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")  # torchvision's "pretrained is deprecated"
        model = lpips.LPIPS(net=net, pnet_rand=True, verbose=False)
    try:
        _load_backbone(model, state, str(path))
    except ValueError as exc:
        return MetricUnavailable(f"n/a: {exc}")
    return model.eval()


def lpips_from_model(model: torch.nn.Module, x: Any, ref: Any, data_range: float | tuple[float, float] = 2.0,
                     batch_size: int = 64) -> np.ndarray:
    """Per-image LPIPS distance (N,) of ``model`` (an ``lpips.LPIPS``) between x and ref.

    Images are clipped to the range, mapped to [-1, 1] (the input range lpips expects) and grey
    images are repeated to RGB.
    """
    x, ref = _pair(x, ref)
    lo, hi = value_range(data_range)
    out = []
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            a, b = (_rgb(torch.from_numpy((np.clip(v[i:i + batch_size], lo, hi) - lo) / (hi - lo) * 2 - 1)
                         .float()) for v in (x, ref))
            try:
                d = model(a, b)
            except RuntimeError as exc:
                raise ValueError(f"x: images of size {x.shape[-2]}x{x.shape[-1]} do not fit the LPIPS "
                                 f"backbone ({str(exc).splitlines()[0]})") from None
            out.append(d.reshape(-1).double().numpy())
    return np.concatenate(out)


def lpips_distance(x: Any, ref: Any, net: str = "alex", weights_dir: str | Path | None = None, *,
                   data_range: float | tuple[float, float] = 2.0,
                   batch_size: int = 64) -> np.ndarray | MetricUnavailable:
    """Per-image LPIPS (Zhang et al. 2018) between ``x`` and ``ref`` (N,), or :class:`MetricUnavailable`
    when the backbone weights are not available offline."""
    _pair(x, ref)  # validate before building the model
    model = lpips_model(net, weights_dir)
    if isinstance(model, MetricUnavailable):
        return model
    return lpips_from_model(model, x, ref, data_range=data_range, batch_size=batch_size)


# ---------------------------------------------------------------------------------------------
# FID / IS
# ---------------------------------------------------------------------------------------------

class Uint8Images(torch.utils.data.Dataset):
    """(N, C, H, W) float images in ``data_range`` served as uint8 (3, H, W) tensors, converted lazily
    (round((clip(x) - lo) / (hi - lo) * 255)), grey repeated to RGB."""

    def __init__(self, images: np.ndarray, data_range: float | tuple[float, float]):
        self.images = images
        self.lo, self.hi = value_range(data_range)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        v = (np.clip(np.asarray(self.images[i], dtype=np.float64), self.lo, self.hi) - self.lo) / (self.hi - self.lo)
        t = torch.from_numpy(np.rint(v * 255.0).astype(np.uint8))
        return t.expand(3, -1, -1).contiguous() if t.shape[0] == 1 else t
