"""FID/IS stand-ins for 8x8 digits: the same formulas in the features of a small digits classifier.

FID (Heusel et al. 2017) and IS (Salimans et al. 2016) need Inception-v3 weights, which this machine
cannot download, and Inception features of 8x8 digits would mean little anyway. The CPU preset
therefore also reports, clearly named as stand-ins:

- ``fd_digits``: the Frechet distance ||mu_q - mu_p||^2 + tr(C_q + C_p - 2 (C_q C_p)^(1/2)) between
  Gaussian fits of the hidden-layer features (ReLU activations, ``HIDDEN`` units) of an MLP classifier
  trained on the clean digits with their labels (scikit-learn's 1797 digits, the CPU image set);
- ``is_digits``: exp(E_x KL(p(c | x) || p(c))) with the same classifier's class probabilities, between
  1 (no class information) and 10 (confident and balanced over the ten digits).

The classifier is trained once per process with a fixed seed (deterministic given the BLAS), on all
1797 digits scaled to [-2, 2] as :func:`emprior.data.digits.load_digits`; its training accuracy is reported
with the scores so a reader can judge the feature space.
"""

from __future__ import annotations

import warnings
from functools import lru_cache
from typing import Any

import numpy as np

HIDDEN = 64


@lru_cache(maxsize=1)
def digits_classifier(seed: int = 0):
    """MLP (64 ReLU units, Adam, L2 1e-3, 150 epochs) fitted on the clean digits in [-2, 2]; (model, accuracy)."""
    from sklearn.datasets import load_digits
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    data = load_digits()
    x = data.images.reshape(len(data.images), -1) / 4.0 - 2.0
    clf = MLPClassifier(hidden_layer_sizes=(HIDDEN,), alpha=1e-3, max_iter=150, random_state=seed)
    with warnings.catch_warnings():  # a fixed budget: the training accuracy below says how good it is
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(x, data.target)
    return clf, float(clf.score(x, data.target))


def _flat(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim < 2 or x[0].size != 64:
        raise ValueError(f"{name}: expected 8x8 digits, shape (N, 1, 8, 8) or (N, 64), got {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name}: contains NaN or Inf")
    return x.reshape(len(x), 64)


def features(clf, x: np.ndarray) -> np.ndarray:
    """Hidden-layer activations relu(x W_0 + b_0), shape (N, HIDDEN)."""
    return np.maximum(_flat(x, "x") @ clf.coefs_[0] + clf.intercepts_[0], 0.0)


def frechet_distance(f_q: np.ndarray, f_p: np.ndarray) -> float:
    """||mu_q - mu_p||^2 + tr(C_q + C_p - 2 (C_q C_p)^(1/2)) of Gaussian fits to two feature sets."""
    mu_q, mu_p = f_q.mean(0), f_p.mean(0)
    c_q, c_p = np.cov(f_q, rowvar=False), np.cov(f_p, rowvar=False)
    # tr (C_q C_p)^(1/2) = tr (C_p^(1/2) C_q C_p^(1/2))^(1/2): a symmetric PSD root, stable when
    # dead ReLU units make the covariances singular (where sqrtm of the product warns).
    lam, vec = np.linalg.eigh(c_p)
    half = (vec * np.sqrt(lam.clip(min=0))) @ vec.T
    inner = np.linalg.eigvalsh(half @ c_q @ half).clip(min=0)
    return float(((mu_q - mu_p) ** 2).sum() + np.trace(c_q) + np.trace(c_p) - 2 * np.sqrt(inner).sum())


def inception_score(probs: np.ndarray) -> float:
    """exp(E_x KL(p(c | x) || p(c))) for class probabilities of shape (N, classes)."""
    p = np.clip(probs, 1e-12, 1.0)
    marginal = p.mean(0, keepdims=True)
    return float(np.exp((p * (np.log(p) - np.log(marginal))).sum(1).mean()))


def digits_scores(samples: np.ndarray, clean: np.ndarray, seed: int = 0) -> dict[str, Any]:
    """{"fd_digits", "is_digits", "classifier_accuracy"} of ``samples`` against ``clean`` (both 8x8 digits).

    Samples outside the data range are clipped to [-2, 2] first, as images are before FID.
    """
    clf, acc = digits_classifier(seed)
    q = np.clip(_flat(samples, "samples"), -2.0, 2.0)
    p = _flat(clean, "clean")
    return {"fd_digits": frechet_distance(features(clf, q), features(clf, p)),
            "is_digits": inception_score(clf.predict_proba(q)), "classifier_accuracy": acc}
