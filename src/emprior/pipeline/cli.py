"""``python -m emprior COMMAND``: one command per Snakemake rule, each a thin call into the package.

Errors from bad input are printed as a single line ``error: ...`` naming the file, key or value, with
exit status 2; nothing partial is left behind (artifacts are written atomically)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from emprior.core.errors import EmpriorError


def load_any_config(path: str) -> dict[str, Any]:
    """A YAML config (validated) or the JSON job config that the Snakefile wrote (already validated)."""
    from emprior.config.loading import load_config

    p = Path(path)
    if p.suffix == ".json":
        try:
            return json.loads(p.read_text())
        except FileNotFoundError:
            raise EmpriorError(f"{p}: job config not found") from None
        except json.JSONDecodeError as exc:
            raise EmpriorError(f"{p}: invalid JSON job config ({exc})") from None
    return load_config(p)


def _common(p: argparse.ArgumentParser, experiment: bool = True, variant: bool = False,
            iteration: bool = False) -> None:
    p.add_argument("--config", required=True, help="YAML config (validated) or a job config JSON")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: config)")
    if experiment:
        p.add_argument("--experiment", required=True)
    if variant:
        p.add_argument("--variant", required=True)
    if iteration:
        p.add_argument("--iteration", type=int, required=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m emprior", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("dataset", help="rule dataset: prepare the clean latents -> clean.h5")
    _common(p)
    p.add_argument("--out", required=True)

    p = sub.add_parser("observe", help="rule observe: corrupt clean.h5 -> observations.h5")
    _common(p)
    p.add_argument("--clean", required=True)
    p.add_argument("--out", required=True)

    p = sub.add_parser("init-prior", help="rule init_prior: Gaussian EM -> iter_000/model.pt")
    _common(p, variant=True)
    p.add_argument("--observations", required=True)
    p.add_argument("--out", required=True)

    p = sub.add_parser("estep", help="rule estep_shard: posterior samples of one shard -> shard_j.h5")
    _common(p, variant=True, iteration=True)
    p.add_argument("--shard", type=int, required=True)
    p.add_argument("--model", required=True, help="iter_{k-1}/model.pt")
    p.add_argument("--observations", required=True)
    p.add_argument("--out", required=True)

    p = sub.add_parser("estep-check", help="rule estep_check: iteration 1's E-step vs the exact posterior under q_0")
    _common(p, variant=True)
    p.add_argument("--model", required=True, help="iter_000/model.pt (the Gaussian q_0)")
    p.add_argument("--observations", required=True)
    p.add_argument("--out", required=True)

    p = sub.add_parser("gather", help="rule gather_posterior: shards -> posterior.h5")
    _common(p, variant=True, iteration=True)
    p.add_argument("--out", required=True)
    p.add_argument("shards", nargs="+")

    p = sub.add_parser("mstep", help="rule mstep: train the denoiser on posterior.h5 -> model.pt")
    _common(p, variant=True, iteration=True)
    p.add_argument("--posterior", required=True)
    p.add_argument("--previous", default=None, help="iter_{k-1}/model.pt to start from (k >= 2)")
    p.add_argument("--out", required=True)

    p = sub.add_parser("prior-samples", help="rule prior_samples: unconditional samples of q_k")
    _common(p, variant=True, iteration=True)
    p.add_argument("--model", required=True)
    p.add_argument("--out", required=True)

    p = sub.add_parser("metrics", help="rule iteration_metrics: metrics.json (quality + audit record)")
    _common(p, variant=True, iteration=True)
    for name in ("model", "samples", "clean", "observations", "out"):
        p.add_argument(f"--{name}", required=True)
    p.add_argument("--posterior", default=None)
    p.add_argument("--estep-check", default=None, help="iter_001/estep_check.json (iteration 1)")

    p = sub.add_parser("fig2", help="rule fig2: Sinkhorn between p(x_t|y) and q(x_t|y) (paper Fig. 2)")
    _common(p, experiment=False)
    p.add_argument("--out-csv", required=True)
    p.add_argument("--out-png", required=True)

    for name, what in (("table4", "paper Table 4 at CPU scale: posterior samplers on an exact-posterior benchmark"),
                       ("table5", "paper Table 5: time and memory per sampling step, ratios to DPS")):
        p = sub.add_parser(name, help=f"rule {name}: {what}")
        _common(p, experiment=False)
        p.add_argument("--out-csv", required=True)
        p.add_argument("--out-md", required=True)

    p = sub.add_parser("table1", help="rule table1: final sample quality per variant vs paper Table 1")
    _common(p, experiment=False)
    p.add_argument("--out-csv", required=True)
    p.add_argument("--out-md", required=True)
    p.add_argument("--out-tex", required=True)
    p.add_argument("metrics", nargs="+")

    p = sub.add_parser("figures", help="rule figures: metric curves along EM iterations")
    _common(p)
    p.add_argument("--out", required=True)
    p.add_argument("metrics", nargs="+")

    p = sub.add_parser("fig3", help="rule fig3: 2-d marginals of q_k along iterations (manifold)")
    _common(p)
    p.add_argument("--clean", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("samples", nargs="+", help="iter_k/prior_samples.h5 files")

    p = sub.add_parser("audit", help="print one row per EM iteration and flag anomalies")
    p.add_argument("results", help="results folder (e.g. results/)")

    p = sub.add_parser("validate-config", help="validate YAML config files against config/schema.yaml")
    p.add_argument("configs", nargs="+")
    return parser


# Commands that only move arrays: importing torch (~2-3 s) would be most of their run time, and the
# gather job sits on every EM iteration's critical path.
NO_TORCH = frozenset({"gather"})


def run(args: argparse.Namespace) -> int:
    from emprior.core.log import get_logger

    log = get_logger("emprior")
    if args.command == "audit":
        from emprior.evaluation.audit import audit

        text, status = audit(args.results)
        print(text)
        return status
    if args.command == "validate-config":
        from emprior.config.loading import load_config

        load_config(*args.configs)
        print(f"ok: {', '.join(args.configs)}")
        return 0

    config = load_any_config(args.config)
    if args.command not in NO_TORCH:
        import torch

        torch.set_num_threads(args.threads or config.get("torch_threads", 1))
        # Subnormal floats (SiLU of very negative inputs, tiny gradients) slow CPU kernels: the manifold
        # M-step (width-256 MLP) ran 2.6x faster with them flushed to zero (benchmarks/denormals.py).
        torch.set_flush_denormal(True)
    log.info("%s %s", args.command, " ".join(f"{k}={v}" for k, v in vars(args).items() if k != "command"))
    from emprior.pipeline import steps

    c = args.command
    if c == "dataset":
        steps.dataset(config, args.experiment, args.out)
    elif c == "observe":
        steps.observe(config, args.experiment, args.clean, args.out)
    elif c == "init-prior":
        steps.init_prior(config, args.experiment, args.variant, args.observations, args.out)
    elif c == "estep":
        steps.estep(config, args.experiment, args.variant, args.iteration, args.shard, args.model,
                    args.observations, args.out)
    elif c == "estep-check":
        steps.estep_check(config, args.experiment, args.variant, args.model, args.observations, args.out)
    elif c == "gather":
        steps.gather(config, args.experiment, args.variant, args.iteration, args.shards, args.out)
    elif c == "mstep":
        steps.mstep(config, args.experiment, args.variant, args.iteration, args.posterior, args.previous, args.out)
    elif c == "prior-samples":
        steps.prior_samples(config, args.experiment, args.variant, args.iteration, args.model, args.out)
    elif c == "metrics":
        from emprior.evaluation.iteration import iteration_metrics

        iteration_metrics(config, args.experiment, args.variant, args.iteration, args.model, args.samples,
                          args.clean, args.observations, args.posterior, args.out, args.estep_check)
    elif c == "fig2":
        steps.fig2(config, args.out_csv, args.out_png)
    elif c == "table4":
        steps.table4(config, args.out_csv, args.out_md)
    elif c == "table5":
        steps.table5(config, args.out_csv, args.out_md)
    elif c == "table1":
        steps.table1(config, args.metrics, args.out_csv, args.out_md, args.out_tex)
    elif c == "figures":
        steps.figures(config, args.experiment, args.metrics, args.out)
    elif c == "fig3":
        steps.fig3(config, args.experiment, args.clean, args.samples, args.out)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except EmpriorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
