"""Paired EM: two or more E-step variants that share every random stream. Not part of the tests.

    python benchmarks/paired_em.py --variants diem_tweedie,diem_inv --iterations 10 --evaluate 3,6,10 \
        [--experiment digits] [--seed 0] [--config config/config.yaml]

In the DAG each variant draws its own streams (the variant name is part of every seed), so the gap
between two variants mixes their difference with seed noise. Here the variants start from the same
Gaussian q_0 and the same network initialisation, their E-steps use the same seeds (and so the same
x_T and Langevin noise), their M-steps the same batches and noise levels, and their prior samples the
same x_T: what differs is the covariance in the E-step and what it led to. Each evaluated iteration
prints the mean over 4 draws of ``evaluate.n_samples`` prior samples (Sinkhorn, and the classifier
FD/IS where the experiment has them) and the RMSE of the posterior samples to the clean data.
The README's "Table 1" section quotes runs of this script (seeds 0 and 1).
"""

from __future__ import annotations

import argparse
import copy
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from emprior.pipeline import steps
from emprior.core.artifacts import load_h5
from emprior.config.loading import load_config
from emprior.diffusion.core import Schedule
from emprior.methods.diem import make_method, run_estep
from emprior.evaluation.iteration import sample_quality
from emprior.priors.checkpoint import Prior, load_prior
from emprior.nets import build_denoiser
from emprior.data.observations import load_observations
from emprior.core.rng import derive_seed, torch_generator
from emprior.training.mstep import em_mstep

REPO = Path(__file__).resolve().parents[1]
DRAWS = 4


def score(prior: Prior, clean: np.ndarray, exp: dict) -> dict[str, float]:
    ev = exp["evaluate"]
    rows = []
    for s in range(DRAWS):
        xs = prior.sample(ev["n_samples"], exp, torch.Generator().manual_seed(500 + s)).numpy()
        q = sample_quality(xs, clean, dict(ev, fid=False), 40 + s, None)
        rows.append({k: q[k] for k in ("sinkhorn", "fd_digits", "is_digits") if q.get(k) is not None})
    return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}


def run(cfg: dict, experiment: str, variants: list[str], iterations: int, evaluate: set[int], seed: int,
        workdir: Path) -> None:
    exp = cfg["experiments"][experiment]
    clean_path, obs_path, q0_path = workdir / "clean.h5", workdir / "observations.h5", workdir / "q0.pt"
    steps.dataset(cfg, experiment, str(clean_path))
    steps.observe(cfg, experiment, str(clean_path), str(obs_path))
    steps.init_prior(cfg, experiment, variants[0], str(obs_path), str(q0_path))  # q_0 shared by all
    obs, clean = load_observations(obs_path), load_h5(clean_path)[0]["x"]
    schedule = Schedule(**exp["schedule"])
    blocks = list(range(-(-len(obs) // exp["estep"]["block_size"])))
    for variant in variants:
        method = make_method(exp["variants"][variant])
        prior = load_prior(q0_path)
        torch.manual_seed(derive_seed(seed, experiment, "net_init"))
        net = build_denoiser(dict(exp["denoiser"]), clean.shape[1:])
        for k in range(1, iterations + 1):
            t0 = time.perf_counter()
            # "shared" instead of the variant name: the same seeds for every variant
            post = run_estep(prior, method, obs, exp, seed, experiment, "shared", k, blocks)
            x = post["x"]
            rmse = float(np.sqrt(((x.numpy() - clean[:len(x)]) ** 2).reshape(len(x), -1).mean(1)).mean())
            trained = em_mstep(net, x, schedule, exp["mstep"], torch_generator(seed, experiment, "shared", k, "mstep"))
            model = copy.deepcopy(net).eval().requires_grad_(False)  # EMA weights: q_k
            net.load_state_dict(trained["raw"])  # the next M-step starts from the raw weights, as in the DAG
            prior = Prior("denoiser", tuple(clean.shape[1:]), model, {}, module=model)  # q_k
            line = f"seed {seed} {variant} iteration {k}: posterior RMSE {rmse:.4f}"
            if k in evaluate:
                line += "".join(f", {name} {v:.3f}" for name, v in score(prior, clean, exp).items())
            print(line + f" ({time.perf_counter() - t0:.0f} s)", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default=str(REPO / "config" / "config.yaml"))
    ap.add_argument("--experiment", default="digits")
    ap.add_argument("--variants", default="diem_tweedie,diem_inv")
    ap.add_argument("--iterations", type=int, default=10)
    ap.add_argument("--evaluate", default="3,6,10", help="iterations whose prior is scored")
    ap.add_argument("--seed", type=int, default=0, help="seed of the EM streams (the data keep the config's)")
    args = ap.parse_args()
    cfg = load_config(args.config)  # data, observations and q_0 from the config's seed; --seed: EM streams
    variants = args.variants.split(",")
    unknown = [v for v in variants if v not in cfg["experiments"][args.experiment]["variants"]]
    if unknown:
        raise SystemExit(f"--variants: {unknown} not in experiments.{args.experiment}.variants of {args.config}")
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)  # as `python -m emprior` does
    logging.disable(logging.INFO)
    with tempfile.TemporaryDirectory() as tmp:
        run(cfg, args.experiment, variants, args.iterations, {int(k) for k in args.evaluate.split(",") if k},
            args.seed, Path(tmp))


if __name__ == "__main__":
    main()
