"""GPU check (issue 14): the paper's CIFAR-10 U-Net (Table 3, ``config/paper.yaml`` experiment ``cifar10``)
with random weights, on one device, in at most ~4 minutes on a GPU. Not a test.

    PYTHONPATH=src python3 benchmarks/gpu_check.py [--device cuda] [--autocast none bf16] [--no-tf32] [--compile]
    PYTHONPATH=src python3 benchmarks/gpu_check.py --device cpu --hid-channels 16 32 48 --hid-blocks 1 1 1 \\
        --batch 16 --estep-batch 16 --mstep-steps 4 --estep-steps 2 --warmup 1 --repeats 5   # reduced sizes

Needs torch, numpy, PyYAML, tqdm and h5py (imported by emprior.core.artifacts); no Snakemake, and no
jsonschema (the net and the operator are built from their options dataclasses, see ``build_net``).
Measures, per autocast setting (``--autocast``; TF32 and compile as given, via
:mod:`emprior.core.precision`):

1. M-step images/s through the suite's own loop (``emprior.training.mstep.train_denoiser``: the paper's
   Adam, clipping, EMA 0.999, hflip + pad_crop, the per-step loss check) vs a bare PyTorch loop over
   the same net, loss (``dsm_loss``), optimiser, augmentations, batch and precision, interleaved; and
   the suite's loop at the per-GPU share of the batch on 4 GPUs (batch / 4), which the projection uses.
2. E-step seconds per diffusion step at batch ``--estep-batch`` (default 1024) of MMPS(1) (Tweedie, one
   CG iteration) vs DPS, the suite's posterior samplers (``emprior.posterior``) inside the DDPM sampler,
   75 % of pixels deleted (the paper's Table 1 operator).
3. Peak memory of each phase: ``torch.cuda.max_memory_allocated`` on a GPU; on the CPU the process's
   ``ru_maxrss`` (a running maximum over the whole process, so later phases read at least the earlier).
4. The projected wall time of one paper EM iteration on 4 such devices: 50 000 posterior samples with
   T = 256 steps (the E-step, 50 000 x 256 / 1024 MMPS(1) steps at the measured time, spread over 4
   devices) plus 256 epochs on 50 000 images (the M-step at 4 x the measured per-share images/s:
   all-reduce and all-gather costs left out, so it is a lower bound), against the paper's 3-4 h on
   4 A100 (Appendix C).

Writes a JSON to ``--out`` (default benchmarks/gpu_check_<device>.json) and prints it.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import resource
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

REPO = Path(__file__).resolve().parents[1]
PAPER_SAMPLES, PAPER_STEPS, PAPER_EPOCHS, PAPER_GPUS = 50_000, 256, 256, 4
PAPER_HOURS = (3.0, 4.0)  # one EM iteration on 4 A100 (40 GB), Appendix C
TARGETS = {"mstep_ratio_min": 0.90, "mmps_over_dps_max": 1.5, "projected_hours_max": PAPER_HOURS[1]}


def paper_experiment(path: Path) -> dict[str, Any]:
    import yaml

    return yaml.safe_load(path.read_text())["experiments"]["cifar10"]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kB


def timed(fn: Callable[[], Any], device: torch.device) -> float:
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


# The registries' plug-ins are built from their options dataclasses directly: Registry.options also
# checks the values with jsonschema, which the GPU machine's image lacks (the preset is the suite's own).
def build_net(denoiser_cfg: dict[str, Any], x_shape: tuple[int, ...]) -> torch.nn.Module:
    """``emprior.nets.build_denoiser`` without the jsonschema check: Eq. (26) around the registered net."""
    from emprior.diffusion.preconditioning import PreconditionedDenoiser
    from emprior.nets import NETS

    entry = NETS.entry(denoiser_cfg["net"])
    opts = entry.options(**{k: v for k, v in denoiser_cfg.items() if k != NETS.key})
    return PreconditionedDenoiser(entry.obj(opts, x_shape))


def draw_operator(obs: dict[str, Any], n: int, x_shape: tuple[int, ...]):
    """``emprior.operators.make_operator`` without the jsonschema check."""
    import numpy as np

    from emprior.operators.base import OPERATORS

    entry = OPERATORS.entry(obs["operator"])
    return entry.obj.draw(n, x_shape, obs["noise_std"], np.random.default_rng(0), entry.options(**obs["options"]))


def random_net(denoiser_cfg: dict[str, Any], x_shape: tuple[int, ...], device: torch.device, seed: int = 0):
    """The paper's denoiser with random weights: the zero-initialised output and modulation layers get
    N(0, 0.02^2) too, so no layer is a no-op (the cost does not depend on the values)."""
    torch.manual_seed(seed)
    net = build_net(denoiser_cfg, x_shape)
    with torch.no_grad():
        for p in net.parameters():
            if not p.any():
                p.normal_(0.0, 0.02)
    return net.to(device)


def bench_mstep(exp: dict[str, Any], args: argparse.Namespace, precision, device: torch.device) -> dict[str, Any]:
    from emprior.diffusion.loss import dsm_loss
    from emprior.diffusion.schedule import Schedule
    from emprior.training.mstep import train_denoiser

    x_shape = (3, 32, 32)
    schedule = Schedule(**exp["schedule"])
    batch = args.batch
    g_data = torch.Generator(device=device).manual_seed(1)
    data = torch.rand(max(4 * batch, 1024), *x_shape, generator=g_data, device=device) * 2 - 1
    base = {k: v for k, v in exp["mstep"].items() if k not in ("epochs", "gpus", "checkpoint_every")}
    kinds = list(base.get("augment", []))

    def suite(b: int, steps: int) -> float:
        net = random_net(exp["denoiser"], x_shape, device)
        gen = torch.Generator(device=device).manual_seed(0)
        cfg = dict(base, batch_size=b, steps=steps)
        return timed(lambda: train_denoiser(net, data, schedule, cfg, gen, precision=precision), device)

    def bare(b: int, steps: int) -> float:
        """The same work written plainly: no per-step host sync, augmentation offsets drawn on the host."""
        net = random_net(exp["denoiser"], x_shape, device)
        model = torch.compile(net) if precision.compile else net
        gen = torch.Generator(device=device).manual_seed(0)
        rng = random.Random(0)
        opt = torch.optim.Adam(net.parameters(), lr=base["lr"], foreach=True)
        params = list(net.parameters())
        shadow = [p.detach().clone() for p in params]
        decay, clip = base.get("ema_decay"), base.get("clip")
        pad = x_shape[-1] // 8
        net.train()

        def run() -> None:
            for _ in range(steps):
                x = data[torch.randint(0, len(data), (b,), generator=gen, device=device)]
                if "hflip" in kinds:
                    flip = torch.rand(b, generator=gen, device=device) < 0.5
                    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
                if "pad_crop" in kinds:
                    dx, dy = rng.randrange(2 * pad + 1), rng.randrange(2 * pad + 1)
                    x = torch.nn.functional.pad(x, (pad,) * 4, mode="reflect")[..., dy:dy + 32, dx:dx + 32]
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision.autocast == "bf16"):
                    loss = dsm_loss(model, x, schedule, generator=gen)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if clip:
                    torch.nn.utils.clip_grad_norm_(params, clip)
                opt.step()
                if decay:
                    with torch.no_grad():
                        torch._foreach_lerp_(shadow, params, 1 - decay)

        return timed(run, device)

    out: dict[str, Any] = {"batch": batch, "steps": args.mstep_steps, "warmup_steps": args.warmup}
    for name, fn in (("suite", suite), ("bare", bare)):  # warm-up: cuDNN autotuning, allocator, compile
        out[f"{name}_warmup_s"] = fn(batch, args.warmup)
    rates: dict[str, list[float]] = {"suite": [], "bare": []}
    for r in range(args.repeats):  # interleaved, alternating which goes first
        order = [("suite", suite), ("bare", bare)]
        for name, fn in order if r % 2 == 0 else order[::-1]:
            reset_peak(device)
            rates[name].append(args.mstep_steps * batch / fn(batch, args.mstep_steps))
            out[f"{name}_peak_mb"] = peak_mb(device)
    pairs = sorted(s / b for s, b in zip(rates["suite"], rates["bare"]))
    out.update({"suite_images_per_s": median(rates["suite"]), "bare_images_per_s": median(rates["bare"]),
                "suite_over_bare": pairs[len(pairs) // 2], "pair_ratios": pairs,
                "suite_images_per_s_all": rates["suite"], "bare_images_per_s_all": rates["bare"]})
    share = max(1, batch // PAPER_GPUS)
    suite(share, args.warmup)
    reset_peak(device)
    out["share_batch"] = share
    out["share_images_per_s"] = args.mstep_steps * share / suite(share, args.mstep_steps)
    out["share_peak_mb"] = peak_mb(device)
    return out


def bench_estep(exp: dict[str, Any], args: argparse.Namespace, precision, device: torch.device) -> dict[str, Any]:
    from emprior.diffusion.samplers import sample
    from emprior.diffusion.schedule import Schedule
    from emprior.posterior import make_posterior

    x_shape = (3, 32, 32)
    n = args.estep_batch
    schedule = Schedule(**exp["schedule"])
    net = random_net(exp["denoiser"], x_shape, device).eval().requires_grad_(False)
    denoiser = precision.wrap(net)
    obs = exp["observation"]
    op = draw_operator(obs, n, x_shape)
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.rand(n, *x_shape, generator=g, device=device) * 2 - 1
    y = op.observe(x, generator=g)
    x_T = schedule.sigma_max * torch.randn(n, *x_shape, generator=g, device=device)
    mmps = exp["variants"]["diem_tweedie"]["posterior"]
    posts = {"mmps1": make_posterior("mmps", denoiser, op, y, covariance=mmps["covariance"], solver=mmps["solver"],
                                     maxiter=mmps["maxiter"]),
             "dps": make_posterior("dps", denoiser, op, y, zeta=1.0)}

    def run(name: str, steps: int) -> float:
        return timed(lambda: sample(posts[name], x_T, schedule, steps, exp["estep"]["sampler"], generator=g,
                                    final_denoise=False), device)

    out: dict[str, Any] = {"batch": n, "steps": args.estep_steps, "sampler": exp["estep"]["sampler"],
                           "mmps": f"mmps {mmps['covariance']} {mmps['solver']} maxiter={mmps['maxiter']}"}
    for name in posts:
        out[f"{name}_warmup_s"] = run(name, 1)
    per_step: dict[str, list[float]] = {k: [] for k in posts}
    for r in range(args.repeats):
        for name in list(posts) if r % 2 == 0 else list(posts)[::-1]:
            reset_peak(device)
            per_step[name].append(run(name, args.estep_steps) / args.estep_steps)
            out[f"{name}_peak_mb"] = peak_mb(device)
    for name, v in per_step.items():
        out[f"{name}_s_per_step"] = median(v)
        out[f"{name}_s_per_step_all"] = v
    out["mmps1_over_dps"] = out["mmps1_s_per_step"] / out["dps_s_per_step"]
    out["mmps1_vjps_per_call"] = posts["mmps1"].summary()["vjps_per_call"]
    return out


def project(mstep: dict[str, Any], estep: dict[str, Any]) -> dict[str, Any]:
    """One paper EM iteration on PAPER_GPUS devices like this one (see the module docstring)."""
    estep_s = PAPER_SAMPLES * PAPER_STEPS * estep["mmps1_s_per_step"] / estep["batch"] / PAPER_GPUS
    images = PAPER_EPOCHS * PAPER_SAMPLES
    mstep_s = images / (PAPER_GPUS * mstep["share_images_per_s"])
    mstep_s_one = images / (PAPER_GPUS * mstep["suite_images_per_s"])  # if 4 GPUs scaled batch-256 throughput
    hours = (estep_s + mstep_s) / 3600
    return {"gpus": PAPER_GPUS, "estep_hours": estep_s / 3600, "mstep_hours": mstep_s / 3600,
            "mstep_hours_at_full_batch_throughput": mstep_s_one / 3600, "total_hours": hours,
            "paper_hours": list(PAPER_HOURS), "over_paper_upper": hours / PAPER_HOURS[1]}


def median(v: list[float]) -> float:
    s = sorted(v)
    return s[len(s) // 2] if len(s) % 2 else (s[len(s) // 2 - 1] + s[len(s) // 2]) / 2


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    sys.path.insert(0, str(REPO / "src"))
    from emprior.core.precision import Precision
    from emprior.core.provenance import git_commit

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", default=None, help="JSON path (default benchmarks/gpu_check_<device>.json)")
    ap.add_argument("--config", default=str(REPO / "config" / "paper.yaml"))
    ap.add_argument("--autocast", nargs="+", default=["none"], choices=["none", "bf16"],
                    help="one measurement per setting (precision.autocast)")
    ap.add_argument("--no-tf32", dest="tf32", action="store_false", help="precision.tf32: false (CUDA only)")
    ap.add_argument("--compile", action="store_true", help="precision.compile: true")
    ap.add_argument("--hid-channels", type=int, nargs="+", default=None,
                    help="override the U-Net's hid_channels (reduced CPU runs; default: the paper's)")
    ap.add_argument("--hid-blocks", type=int, nargs="+", default=None, help="override hid_blocks (likewise)")
    ap.add_argument("--batch", type=int, default=256, help="M-step batch (paper: 256)")
    ap.add_argument("--mstep-steps", type=int, default=30, help="timed M-step steps per repeat")
    ap.add_argument("--warmup", type=int, default=3, help="untimed warm-up steps per loop")
    ap.add_argument("--estep-batch", type=int, default=1024, help="posterior samples per batch (paper: 1024)")
    ap.add_argument("--estep-steps", type=int, default=8, help="timed diffusion steps per repeat")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved repeats (medians reported)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads on the CPU (default: torch's)")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda but torch sees no CUDA device (use --device cpu)")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # as `python -m emprior` does
    exp = paper_experiment(Path(args.config))
    paper_net = dict(exp["denoiser"])
    if args.hid_channels:
        exp["denoiser"]["hid_channels"] = args.hid_channels
    if args.hid_blocks:
        exp["denoiser"]["hid_blocks"] = args.hid_blocks
    start = time.perf_counter()
    n_params = sum(p.numel() for p in build_net(exp["denoiser"], (3, 32, 32)).parameters())
    result: dict[str, Any] = {
        "device": device_name(device), "device_type": device.type, "git_commit": git_commit(),
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version()},
        "net": {"config": exp["denoiser"], "parameters": n_params, "x_shape": [3, 32, 32],
                "is_paper_net": exp["denoiser"] == paper_net},
        "args": vars(args), "targets": TARGETS, "runs": {}}
    for autocast in args.autocast:
        precision = Precision(autocast=autocast, tf32=args.tf32, compile=args.compile)
        precision.apply(device)
        run: dict[str, Any] = {"precision": precision.record()}
        run["mstep"] = bench_mstep(exp, args, precision, device)
        run["estep"] = bench_estep(exp, args, precision, device)
        run["projection"] = project(run["mstep"], run["estep"])
        run["targets_met"] = {
            "mstep_ratio": run["mstep"]["suite_over_bare"] >= TARGETS["mstep_ratio_min"],
            "mmps_over_dps": run["estep"]["mmps1_over_dps"] <= TARGETS["mmps_over_dps_max"],
            "projected_hours": run["projection"]["total_hours"] <= TARGETS["projected_hours_max"]}
        result["runs"][autocast] = run
        print(json.dumps({autocast: {k: run[k] for k in ("projection", "targets_met")}}), flush=True)
    result["wall_s"] = time.perf_counter() - start
    out = Path(args.out or REPO / "benchmarks" / f"gpu_check_{device.type}.json")
    out.write_text(json.dumps(result, indent=1, default=str) + "\n")
    print(json.dumps(result, indent=1, default=str))
    print(f"wrote {out} ({result['wall_s']:.0f} s)", file=sys.stderr)
    return result


if __name__ == "__main__":
    main()
