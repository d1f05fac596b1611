"""Random smooth 1-d manifolds embedded in R^dim ("randman", Zenke & Vogels 2021).

Each output coordinate i is a sum of sinusoids of the intrinsic coordinate u in [0, 1),

    f_i(u) = sum_{k=1}^{K} k^(-alpha) a_ik sin(2 pi (k b_ik u + c_ik)),     a, b, c ~ U[0, 1),

so the k-th term has frequency k b_ik <= k and an amplitude that decays like k^(-alpha): a larger
``smoothness`` alpha gives a smoother curve. The coordinates are then standardised, f -> (f - m) / s,
with the mean m and standard deviation s of f(u) under u ~ U[0, 1), so every coordinate has zero mean
and unit standard deviation; ``scaling="minmax"`` instead maps each coordinate's range over
u in [0, 1) onto [-2, 2], as the official DiEM manifold experiment does (with K = 10, alpha = 3).
These are the manifolds of the paper's Sec. 4.2 / Fig. 2 (R^3) and of the
low-dimensional manifold experiment of Sec. 5.1 (R^5, Fig. 7).
"""

from __future__ import annotations

import math

import numpy as np

# Midpoint rule on this many points integrates f and f^2 over [0, 1) essentially exactly: the
# integrands are trigonometric polynomials of frequency < 2 K, far below the grid's Nyquist rate.
_GRID = 8192


class RandomManifold:
    """A random smooth curve u -> f(u) in R^dim, u in [0, 1).

    Args:
        dim: embedding dimension (number of output coordinates), >= 1.
        rng: numpy Generator that draws the amplitudes, frequencies and phases.
        n_freq: number K of sinusoids per coordinate, >= 1.
        smoothness: decay exponent alpha >= 0 of the amplitudes k^(-alpha).
    """

    def __init__(self, dim: int, rng: np.random.Generator, n_freq: int = 3, smoothness: float = 1.0,
                 scaling: str = "standard"):
        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 1:
            raise ValueError(f"RandomManifold: dim must be an integer >= 1, got {dim!r}")
        if isinstance(n_freq, bool) or not isinstance(n_freq, (int, np.integer)) or n_freq < 1:
            raise ValueError(f"RandomManifold: n_freq must be an integer >= 1, got {n_freq!r}")
        if not isinstance(smoothness, (int, float, np.floating, np.integer)) or not (
            math.isfinite(float(smoothness)) and smoothness >= 0
        ):
            raise ValueError(f"RandomManifold: smoothness must be a finite number >= 0, got {smoothness!r}")
        if not isinstance(rng, np.random.Generator):
            raise ValueError(f"RandomManifold: rng must be a numpy.random.Generator, got {type(rng).__name__}")
        self.dim = int(dim)
        self.n_freq = int(n_freq)
        self.smoothness = float(smoothness)
        k = np.arange(1, self.n_freq + 1, dtype=np.float64)
        a, b, c = rng.random((3, self.dim, self.n_freq))
        self.amplitude = a * k ** (-self.smoothness)  # (dim, K)
        self.frequency = k * b  # (dim, K), cycles per unit of u
        self.phase = c  # (dim, K), in cycles
        # Moments of the raw curve under u ~ U[0, 1) for the standardisation.
        raw = self._raw((np.arange(_GRID) + 0.5) / _GRID)
        if scaling == "standard":
            self.offset = raw.mean(axis=0)
            spread = raw.std(axis=0)
        elif scaling == "minmax":  # official DiEM code: x -> 4 (x - min) / (max - min) - 2, into [-2, 2]
            lo, hi = raw.min(axis=0), raw.max(axis=0)
            self.offset, spread = (lo + hi) / 2, (hi - lo) / 4
        else:
            raise ValueError(f"RandomManifold: scaling must be 'standard' or 'minmax', got {scaling!r}")
        self.scaling = scaling
        # A coordinate whose sinusoids all have near-zero frequency is (almost) constant: keep it
        # centred but do not blow it up.
        self.scale = np.where(spread > 1e-8, spread, 1.0)

    def _raw(self, u: np.ndarray) -> np.ndarray:
        angle = 2 * np.pi * (u[:, None, None] * self.frequency + self.phase)  # (n, dim, K)
        return np.einsum("ndk,dk->nd", np.sin(angle), self.amplitude)

    def __call__(self, u: np.ndarray) -> np.ndarray:
        """Points f(u) of shape (n, dim) for intrinsic coordinates ``u`` of shape (n,).

        ``u`` outside [0, 1) is allowed: f extends smoothly (it is not periodic in general).
        """
        u = np.asarray(u, dtype=np.float64)
        if u.ndim != 1:
            raise ValueError(f"RandomManifold: u must have shape (n,), got {u.shape}")
        if not np.all(np.isfinite(u)):
            raise ValueError("RandomManifold: u contains NaN or Inf")
        return (self._raw(u) - self.offset) / self.scale

    def sample(self, n: int, rng: np.random.Generator, noise_std: float = 0.0) -> np.ndarray:
        """``n`` points f(u) + noise_std * z with u ~ U[0, 1) and z ~ N(0, I); shape (n, dim)."""
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
            raise ValueError(f"RandomManifold.sample: n must be an integer >= 0, got {n!r}")
        if not (math.isfinite(float(noise_std)) and noise_std >= 0):
            raise ValueError(f"RandomManifold.sample: noise_std must be finite and >= 0, got {noise_std!r}")
        u = rng.random(int(n))
        x = self(u)
        if noise_std > 0:
            x = x + noise_std * rng.standard_normal(x.shape)
        return x
