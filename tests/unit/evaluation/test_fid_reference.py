"""FID/IS against cached reference statistics (rule fid_reference) vs torch-fidelity's own pipeline.

Inception weights are random (a real torch-fidelity state-dict file, tests only); 4 images per set keep
the 299 x 299 forward passes to a few seconds on one CPU thread.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from emprior.core.errors import ConfigError
from emprior.core.job import Job
from emprior.evaluation.iteration import fid_quality
from emprior.evaluation.metrics import MetricUnavailable
from emprior.evaluation.metrics import fid_reference as fr
from emprior.evaluation.metrics import images as im

N = 4


class _Uint8(torch.utils.data.Dataset):
    """torch-fidelity's input format built independently of emprior: (3, H, W) uint8 tensors."""

    def __init__(self, u8: np.ndarray):
        self.u8 = torch.from_numpy(u8)

    def __len__(self) -> int:
        return len(self.u8)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.u8[i]


def _images(seed: int, shift: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Images in [-2, 2] on the uint8 grid (x = 4 u / 255 - 2) and their uint8 values u."""
    u8 = np.random.default_rng(seed).integers(0, 256 - shift, (N, 3, 32, 32)).astype(np.uint8) + shift
    return (u8.astype(np.float64) * 4 / 255 - 2).astype(np.float32), u8.astype(np.uint8)


def _tf_kwargs(weights: Path, **kw):
    return dict(feature_extractor="inception-v3-compat", feature_extractor_weights_path=str(weights), cuda=False,
                cache=False, verbose=False, save_cpu_ram=True, **kw)


def test_reference_statistics_equal_torch_fidelity_2048(offline, random_inception, tmp_path):
    """pool3 (2048-d) mean and covariance of the rule's function, through its HDF5 file, equal
    torch-fidelity's statistics of the same uint8 images (rtol 1e-5)."""
    from torch_fidelity.metric_fid import fid_input_id_to_statistics
    from torch_fidelity.utils import create_feature_extractor

    x, u8 = _images(0)
    ref = fr.reference_statistics(x, random_inception)
    assert ref.mu.shape == (2048,) and ref.sigma.shape == (2048, 2048)
    path = fr.save_reference(tmp_path / "fid_reference.h5", ref)
    loaded = fr.load_reference(path)
    extractor = create_feature_extractor("inception-v3-compat", ["2048"], **_tf_kwargs(random_inception))
    theirs = fid_input_id_to_statistics(1, extractor, "2048", **_tf_kwargs(random_inception, input1=_Uint8(u8),
                                                                               batch_size=64))
    assert loaded.mu.dtype == theirs["mu"].dtype and loaded.sigma.dtype == theirs["sigma"].dtype
    scale = np.abs(theirs["sigma"]).max()
    assert scale > 1e-4 * np.abs(theirs["mu"]).max() ** 2  # features that differ between images: not vacuous
    np.testing.assert_allclose(loaded.mu, theirs["mu"], rtol=1e-5, atol=1e-6 * np.abs(theirs["mu"]).max())
    np.testing.assert_allclose(loaded.sigma, theirs["sigma"], rtol=1e-5, atol=1e-6 * scale)
    meta = loaded.meta
    assert meta["n_images"] == N and meta["fid_features"] == "2048" and meta["image_shape"] == [3, 32, 32]
    assert meta["weights_sha256"] == im.sha256_file(random_inception) and meta["official_weights"] is False
    assert meta["data_range"] == [-2.0, 2.0] and meta["weights_path"] == str(random_inception)


def test_fid_is_from_cached_statistics_equal_calculate_metrics(offline, random_inception):
    """FID from the cached reference statistics and IS of the samples equal torch_fidelity.calculate_metrics
    between the same two image sets (FID on the 64-d layer: the 2048-d eigenproblem takes tens of seconds)."""
    import torch_fidelity

    x_ref, u_ref = _images(1)
    x_q, u_q = _images(2, shift=60)  # brighter: a clearly non-zero FID
    ref = fr.reference_statistics(x_ref, random_inception, fid_features="64")
    ours = fr.fid_is_to_reference(x_q, ref, isc_splits=2)
    theirs = torch_fidelity.calculate_metrics(input1=_Uint8(u_q), input2=_Uint8(u_ref), isc=True, fid=True,
                                              isc_splits=2, feature_layer_fid="64", **_tf_kwargs(random_inception))
    assert ours["fid"] > 1e-3
    assert ours["fid"] == pytest.approx(theirs["frechet_inception_distance"], rel=1e-5)
    assert ours["is_mean"] == pytest.approx(theirs["inception_score_mean"], rel=1e-6)
    assert ours["is_std"] == pytest.approx(theirs["inception_score_std"], rel=1e-5, abs=1e-9)
    assert ours["fid_features"] == "64" and ours["n_reference"] == N and ours["official_weights"] is False


def _clean_h5(tmp_path: Path, x: np.ndarray, job: Job) -> Path:
    from emprior.core.artifacts import save_h5

    return save_h5(tmp_path / "clean.h5", {"x": x}, provenance=job.provenance("dataset"))


def test_missing_weights_give_one_line_reason_and_no_number(offline, tmp_path, caplog):
    """The rule's command without weights: a file with the reason and no statistics; the metrics then
    record fid/is null with that reason. No download is attempted (offline fixture)."""
    from emprior.pipeline.evaluate import fid_reference

    job = Job({"seed": 0, "results": str(tmp_path), "device": "cpu", "experiments": {"c": {}}}, experiment="c")
    x, _ = _images(3)
    missing = tmp_path / "absent" / im.INCEPTION_WEIGHTS
    out = tmp_path / "fid_reference.h5"
    fid_reference(job, str(_clean_h5(tmp_path, x, job)), str(missing), str(out))
    reason = (f"n/a: Inception weights not found at {missing} (no internet); set metrics.inception_weights to a "
              f"copy of https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{im.INCEPTION_WEIGHTS} "
              "or place it there")
    with h5py.File(out, "r") as f:
        assert list(f.keys()) == [] and f.attrs["status"] == reason
    assert reason in caplog.text  # a log record: which stream a handler writes to depends on earlier tests
    loaded = fr.load_reference(out)
    assert isinstance(loaded, MetricUnavailable) and loaded.reason == reason and "\n" not in reason
    assert fid_quality(x, str(out)) == {"fid": None, "is": None, "fid_status": reason}
    assert fid_quality(x, None)["fid_status"] == "n/a: evaluate.fid is off for this experiment"
    with pytest.raises(ConfigError, match=r"experiments\.c\.evaluate\.fid: FID/IS need images"):
        fid_reference(job, str(_clean_h5(tmp_path, x.reshape(N, -1), job)), str(missing), str(out))


def test_samples_need_the_weights_the_reference_used(offline, tmp_path):
    """A weights file that changed (or vanished) since fid_reference ran gives a reason, not a number."""
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"new")
    meta = {"weights_path": str(weights), "weights_sha256": "0" * 64, "fid_features": "2048",
            "image_shape": [3, 32, 32], "data_range": [-2.0, 2.0], "official_weights": False, "n_images": 6}
    ref = fr.ReferenceStatistics(np.zeros(2048, np.float32), np.eye(2048), meta)
    x, _ = _images(4)
    res = fr.fid_is_to_reference(x, ref, isc_splits=2)
    assert isinstance(res, MetricUnavailable) and "changed since the reference statistics" in res.reason
    weights.unlink()
    res = fr.fid_is_to_reference(x, ref, isc_splits=2)
    assert isinstance(res, MetricUnavailable)
    assert res.reason.startswith(f"n/a: Inception weights not found at {weights} ")
    with pytest.raises(ValueError, match="image shape"):
        fr.fid_is_to_reference(x[:, :1], ref)
