"""Measured-pixel fit of samples: RMSE_y(x) = sqrt(mean_i ||y_i - A_i x_i||^2 / m), the root mean
square error of A x against y over the measured entries of every observation.

For E-step samples it says whether the posterior sampler (or DiffEM's conditional model) uses y: a
sampler consistent with the noise model reaches ~ Sigma_y^{1/2} (noise_std), one that ignores y
scores like unconditional prior samples paired with the same observations
(:func:`prior_measured_rmse`, the baseline recorded beside it in metrics.json)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


def measured_rmse(op: Any, y: torch.Tensor, x: torch.Tensor) -> float:
    """sqrt(sum_i ||y_i - A_i x_i||^2 / sum_i m_i) for a batch of observations ``y`` of operators ``op``."""
    x = torch.as_tensor(x, dtype=torch.float32)
    y = torch.as_tensor(y, dtype=torch.float32)
    r = y - op.A(x)
    mask = op.measured(y)
    if mask is not None:
        r = r * mask
        m = float(torch.broadcast_to(mask, y.shape).sum())
    else:
        m = float(r.numel())
    return float(torch.sqrt(r.square().sum() / max(m, 1.0)))


def prior_measured_rmse(obs: Any, samples: np.ndarray) -> float | None:
    """The measured-pixel RMSE of unconditional samples paired with the first observations (sample i
    with observation i): what a sampler that ignores y scores; None if the shapes do not pair."""
    n = min(len(obs), len(samples))
    if n == 0 or tuple(samples.shape[1:]) != tuple(obs.x_shape):
        return None
    rows = np.arange(n)
    op = obs.op[rows] if len(obs.op) > 1 else obs.op
    return measured_rmse(op, obs.y[:n], torch.as_tensor(samples[:n]))
