"""The prior samples of one evaluated iteration split over ``evaluate.shards`` jobs and gathered.

The N = ``evaluate.n_samples`` samples of q_k are cut into S contiguous shards, shard j holding
n_j = floor(N (j+1) / S) - floor(N j / S) samples (sizes differ by at most one, sum N). Shard j draws
its n_j samples from its own random stream, the seed path (experiment, variant, k, "prior_samples",
"shard", j), so a shard that is redone writes the same bytes; ``prior_samples.h5`` is the shards'
samples concatenated in shard order. With S = 1 the one job draws all N from the stream
(experiment, variant, k, "prior_samples"), as before sharding existed.

The samples are i.i.d. draws of q_k whatever S, but which draws they are depends on S (each shard is
one batch through the sampler); the gathered file records S and every shard's checksum.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from emprior.core.artifacts import load_h5, runtime_of, verify
from emprior.core.errors import ArtifactError

STREAM = "prior_samples"


def shard_sizes(n: int, shards: int) -> list[int]:
    """Samples of each of ``shards`` contiguous shards of ``n``: n_j = n(j+1)//S - nj//S."""
    if not 1 <= shards <= n:
        raise ValueError(f"shards: must be in 1..{n} (n_samples), got {shards}")
    return [n * (j + 1) // shards - n * j // shards for j in range(shards)]


def shard_size(n: int, shards: int, shard: int) -> int:
    if not 0 <= shard < shards:
        raise ValueError(f"shard {shard} out of range for {shards} shards")
    return shard_sizes(n, shards)[shard]


def shard_stream(shards: int, shard: int) -> tuple[object, ...]:
    """Keys of shard ``shard``'s random stream after (experiment, variant, k) (``Job.generator``)."""
    return (STREAM,) if shards == 1 else (STREAM, "shard", shard)


def gather_shards(paths: list[str], n: int, shards: int, out: str
                  ) -> tuple[np.ndarray, list[dict[str, Any]], float]:
    """The shards' samples concatenated in the order of ``paths`` (shard 0 first), the record of each
    shard (file, sha256, samples, seed) and their total run time in seconds. A one-line
    :class:`ArtifactError` naming ``out`` or the shard unless there are ``shards`` files, shard j's
    file says it is shard j of ``shards`` and holds n_j samples of one shape."""
    if len(paths) != shards:
        raise ArtifactError(f"{out}: got {len(paths)} prior-sample shards, expected {shards} (evaluate.shards)")
    sizes = shard_sizes(n, shards)
    xs, info, seconds = [], [], 0.0
    for j, path in enumerate(paths):
        data, attrs = load_h5(path, rule="prior_samples_shard")
        x = data.get("x")
        if x is None or attrs.get("shard") != j or attrs.get("shards") != shards:
            raise ArtifactError(f"{path}: not shard {j} of {shards} (has shard {attrs.get('shard')} of "
                                f"{attrs.get('shards')}); delete it and rerun")
        if len(x) != sizes[j] or (xs and x.shape[1:] != xs[0].shape[1:]):
            raise ArtifactError(f"{path}: {len(x)} samples of shape {list(x.shape[1:])}, expected {sizes[j]}"
                                + (f" of shape {list(xs[0].shape[1:])}" if xs else "") + "; delete it and rerun")
        xs.append(x)
        info.append({"file": Path(path).name, "sha256": verify(path)["sha256"], "n": int(len(x)),
                     "seed": str(attrs.get("seed"))})
        seconds += runtime_of(path).get("seconds") or 0.0
    return np.concatenate(xs), info, seconds
