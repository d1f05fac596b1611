"""FID and IS of samples against reference statistics of the clean training set, computed once.

FID (Heusel et al. 2017) compares Gaussians fitted to the Inception pool3 features (2048-d) of two
image sets, FID = ||mu_q - mu_r||^2 + tr(S_q + S_r - 2 (S_q S_r)^(1/2)), so the reference set (the
experiment's clean training images, ``data/clean.h5``) enters only through (mu_r, S_r). The rule
``fid_reference`` computes them once per experiment (:func:`reference_statistics`, saved by
:func:`save_reference`); each iteration's metrics job extracts only its samples' features, in one
pass for both the pool3 features and the logits of the Inception score
IS = exp(E_x KL(p(y|x) || p(y))) (Salimans et al. 2016; mean and std over splits of the samples).

Every step is torch-fidelity's own code: its "inception-v3-compat" extractor (the TF 2015-12-05
graph, images resized to 299 x 299 inside), ``get_featuresdict_from_dataset``,
``fid_features_to_statistics``, ``fid_statistics_to_metric`` and ``isc_features_to_metric`` with its
default splits, shuffle and seed; so the numbers are those of ``torch_fidelity.calculate_metrics`` on
the same two image sets. Images are quantised to uint8 first (:class:`~.images.Uint8Images`).

Without the weights file nothing is computed: the reference file then holds only the reason, the
metrics jobs record it (``fid: null``, ``fid_status``) and the tables show ``n/a``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from emprior.core.digest import sha256_file
from emprior.evaluation.metrics.images import (
    INCEPTION_SHA256,
    MetricUnavailable,
    Uint8Images,
    _as_images,
    missing_inception,
    value_range,
)

EXTRACTOR = "inception-v3-compat"
IS_LAYER = "logits_unbiased"  # torch-fidelity's layer for the Inception score
# The DiEM image convention: clean and sampled images live in [-2, 2].
IMAGE_RANGE = (-2.0, 2.0)
PREPROCESSING = ("uint8 = rint(255 (clip(x, lo, hi) - lo) / (hi - lo)), grey repeated to RGB; "
                 "resized to 299x299 inside torch-fidelity's inception-v3-compat extractor")


@dataclass(frozen=True)
class ReferenceStatistics:
    """mu (d,) and sigma (d, d) of the reference set's Inception features, as torch-fidelity computes
    them (mu in the features' float32, sigma float64), and what they were computed with (``meta``)."""

    mu: np.ndarray
    sigma: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)


def _extract(images: np.ndarray, weights: Path, layers: list[str], data_range: tuple[float, float],
             batch_size: int, cuda: bool) -> dict[str, Any]:
    """torch-fidelity's features ``layers`` of ``images`` (name -> (N, d) CPU tensor)."""
    from torch_fidelity.utils import create_feature_extractor, get_featuresdict_from_dataset

    extractor = create_feature_extractor(EXTRACTOR, layers, cuda=cuda, verbose=False,
                                         feature_extractor_weights_path=str(weights))
    return get_featuresdict_from_dataset(Uint8Images(images, data_range), extractor, batch_size, cuda,
                                         save_cpu_ram=True, verbose=False)  # no DataLoader worker processes


def _check_layer(fid_features: str) -> None:
    if fid_features not in ("64", "192", "768", "2048"):
        raise ValueError(f"fid_features: expected one of '64', '192', '768', '2048', got {fid_features!r}")


def reference_statistics(images: Any, weights_path: str | Path, *,
                         data_range: tuple[float, float] = IMAGE_RANGE, fid_features: str = "2048",
                         batch_size: int = 64, cuda: bool = False) -> ReferenceStatistics | MetricUnavailable:
    """(mu, sigma) of the Inception features ``fid_features`` of ``images`` (N, C, H, W), or the reason
    they cannot be computed (weights file absent). ``fid_features`` other than "2048" (the standard
    pool3 layer) are for tests only: their FIDs are not comparable to published ones."""
    import torch_fidelity
    from torch_fidelity.metric_fid import fid_features_to_statistics

    images = _as_images(images, "images")
    if len(images) < 2:
        raise ValueError(f"images: FID statistics need at least 2 images, got {len(images)}")
    _check_layer(fid_features)
    lo, hi = value_range(tuple(data_range))
    path = Path(weights_path)
    if not path.is_file():
        return missing_inception(path)
    digest = sha256_file(path)
    stats = fid_features_to_statistics(_extract(images, path, [fid_features], (lo, hi), batch_size, cuda)[fid_features])
    meta = {"n_images": len(images), "image_shape": list(images.shape[1:]), "data_range": [lo, hi],
            "feature_extractor": EXTRACTOR, "fid_features": fid_features, "weights_path": str(path),
            "weights_sha256": digest, "official_weights": digest == INCEPTION_SHA256,
            "torch_fidelity": torch_fidelity.__version__, "preprocessing": PREPROCESSING}
    return ReferenceStatistics(stats["mu"], stats["sigma"], meta)


def save_reference(path: str | Path, result: ReferenceStatistics | MetricUnavailable,
                   provenance: dict[str, Any] | None = None, runtime: dict[str, Any] | None = None) -> Path:
    """The rule's HDF5 file: datasets mu, sigma, attributes status "ok" and meta (JSON); or no datasets
    and status = the reason."""
    from emprior.core.artifacts import save_h5

    if isinstance(result, MetricUnavailable):
        return save_h5(path, {}, {"status": result.reason}, provenance, runtime)
    return save_h5(path, {"mu": result.mu, "sigma": result.sigma}, {"status": "ok", "meta": result.meta},
                   provenance, runtime)


def load_reference(path: str | Path) -> ReferenceStatistics | MetricUnavailable:
    from emprior.core.artifacts import load_h5

    data, attrs = load_h5(path, rule="fid_reference")
    status = attrs.get("status")
    if status != "ok":
        return MetricUnavailable(str(status))
    return ReferenceStatistics(data["mu"], data["sigma"], attrs["meta"])


def fid_is_to_reference(samples: Any, reference: ReferenceStatistics | MetricUnavailable, *, isc: bool = True,
                        isc_splits: int = 10, batch_size: int = 64,
                        cuda: bool = False) -> dict[str, Any] | MetricUnavailable:
    """FID of ``samples`` against ``reference`` and their Inception score (torch-fidelity).

    Uses the weights file and preprocessing the reference was computed with, after checking that the
    file is still the one it was (sha256). Returns ``{"fid", "is_mean", "is_std", "fid_features",
    "weights_sha256", "official_weights", "n_reference"}`` (IS keys only if ``isc``), or the reason.
    """
    from torch_fidelity.defaults import DEFAULTS
    from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric
    from torch_fidelity.metric_isc import isc_features_to_metric

    if isinstance(reference, MetricUnavailable):
        return reference
    samples = _as_images(samples, "samples")
    meta = reference.meta
    if list(samples.shape[1:]) != list(meta["image_shape"]):
        raise ValueError(f"samples: image shape {tuple(samples.shape[1:])} differs from the reference's "
                         f"{tuple(meta['image_shape'])}")
    if len(samples) < 2:
        raise ValueError(f"samples: FID needs at least 2 images, got {len(samples)}")
    if isc and not 1 <= isc_splits <= len(samples):
        raise ValueError(f"isc_splits: must be between 1 and the number of samples {len(samples)}, got {isc_splits}")
    path = Path(meta["weights_path"])
    if not path.is_file():
        return missing_inception(path)
    digest = sha256_file(path)
    if digest != meta["weights_sha256"]:
        return MetricUnavailable(f"n/a: {path} changed since the reference statistics were computed (sha256 "
                                 f"{digest[:12]}..., reference {meta['weights_sha256'][:12]}...); rerun fid_reference")
    layer = meta["fid_features"]
    feats = _extract(samples, path, [layer] + ([IS_LAYER] if isc else []), tuple(meta["data_range"]), batch_size,
                     cuda)
    stats = fid_features_to_statistics(feats[layer])
    fid = fid_statistics_to_metric(stats, {"mu": reference.mu, "sigma": reference.sigma}, verbose=False)
    out: dict[str, Any] = {"fid": float(fid["frechet_inception_distance"])}
    if isc:
        score = isc_features_to_metric(feats[IS_LAYER], isc_splits, DEFAULTS["samples_shuffle"], DEFAULTS["rng_seed"])
        out["is_mean"] = float(score["inception_score_mean"])
        out["is_std"] = float(score["inception_score_std"])
    out.update(fid_features=layer, weights_sha256=digest, official_weights=bool(meta["official_weights"]),
               n_reference=int(meta["n_images"]))
    return out
