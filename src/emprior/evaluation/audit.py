"""``python -m emprior audit RESULTS_DIR``: one row per EM iteration from its metrics.json, with
anomalies flagged: NaN/Inf anywhere, a residual blow-up in the E-step, solver breakdowns, > 5 % of
posterior samples left out of the M-step by mstep.max_abs, missing or tampered artifacts, missing
shard files. Iterations whose samples were stored in a lossy dtype (``storage.dtype: float16``, from
the files' provenance) get a ``lossy_samples`` column naming the dtype and files; none otherwise."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import pandas as pd

from emprior.core.artifacts import verify
from emprior.core.errors import ArtifactError

ITER = re.compile(r"iter_(\d{3})$")
EVALUATION = ("prior_samples.h5", "prior_samples", "metrics.json")  # what an evaluated iteration has


def _has_nonfinite(obj: Any) -> bool:
    if isinstance(obj, dict):
        return any(_has_nonfinite(v) for v in obj.values())
    if isinstance(obj, list):
        return any(_has_nonfinite(v) for v in obj)
    return isinstance(obj, float) and not math.isfinite(obj)


def _total_seconds(timing: dict[str, Any]) -> float | None:
    total = (timing.get("model") or {}).get("seconds") or 0.0
    total += sum(v or 0.0 for v in (timing.get("estep_shards") or {}).values())
    return total or None


def _has_estep(it_dir: Path) -> bool:
    """Whether this iteration's method ran an E-step (a method without one writes no posterior): its
    shards folder, or its metrics.json's ``estep`` record, says so."""
    if (it_dir / "posterior").exists() or (it_dir / "posterior.h5").exists():
        return True
    try:
        return "estep" in json.loads((it_dir / "metrics.json").read_text())
    except (OSError, json.JSONDecodeError):
        return False


def audit_rows(results: str | Path, residual_blowup: float = 10.0, breakdown_limit: float = 0.01) -> pd.DataFrame:
    results = Path(results)
    rows = []
    it_dirs = sorted(p for p in results.glob("*/*/iter_*") if ITER.search(p.name))
    last = {}
    for it_dir in it_dirs:
        last[it_dir.parent] = max(last.get(it_dir.parent, 0), int(ITER.search(it_dir.name).group(1)))
    # a method's final stage (<variant>/final/, e.g. DiffEM's) is audited as the iteration after the last
    finals = sorted(p for p in results.glob("*/*/final") if p.is_dir() and p.parent in last)
    for it_dir in it_dirs + finals:
        experiment, variant = it_dir.parent.parent.name, it_dir.parent.name
        k = last[it_dir.parent] + 1 if it_dir.name == "final" else int(ITER.search(it_dir.name).group(1))
        flags: list[str] = []
        lossy: dict[str, str] = {}
        row: dict[str, Any] = {"experiment": experiment, "variant": variant, "iteration": k}
        if it_dir.name == "final":
            row["stage"] = "final"
        # evaluate.iterations may leave an iteration before the last without prior samples and metrics
        evaluated = k == last[it_dir.parent] or any((it_dir / n).exists() for n in EVALUATION)
        names = ["model.pt"] + (["prior_samples.h5", "metrics.json"] if evaluated else [])
        if not evaluated:
            row["evaluated"] = False
        for name in names + (["posterior.h5"] if _has_estep(it_dir) else []):
            path = it_dir / name
            if not path.exists():
                flags.append(f"missing {name}")
                continue
            try:
                record = verify(path)
            except ArtifactError as exc:
                flags.append(f"bad {name}: {exc}")
                continue
            storage = (record.get("provenance") or {}).get("storage") or {}
            if storage.get("lossy"):
                lossy[name] = storage.get("dtype")
        if k:
            shard_dir = it_dir / "posterior"
            shards = sorted(shard_dir.glob("shard_*.h5")) if shard_dir.exists() else []
            m = it_dir / "metrics.json"
            expected = None
            if m.exists():
                try:
                    expected = len(json.loads(m.read_text()).get("estep", {}).get("shards", []))
                except json.JSONDecodeError:
                    pass
            if expected is not None and len(shards) < expected:
                flags.append(f"missing shard ({len(shards)}/{expected} on disk)")
        metrics_path = it_dir / "metrics.json"
        if metrics_path.exists():
            try:
                rec = json.loads(metrics_path.read_text())
            except json.JSONDecodeError:
                rec = {}
                flags.append("metrics.json unreadable")
            q = rec.get("quality", {})
            e = rec.get("estep", {})
            ms = rec.get("mstep", {})
            row.update({
                "sinkhorn": q.get("sinkhorn"), "fid": q.get("fid"),
                "residual_ratio": e.get("residual_ratio_mean"),
                # the mean is what the blow-up flag reads; a few samples thrown far off dominate it
                "residual_median": (e.get("residual_ratio_q") or {}).get("0.5"),
                # does the E-step use y: its samples' RMSE on the measured pixels vs the prior samples'
                "measured_rmse": (e.get("measured_rmse") or {}).get("posterior"),
                "measured_rmse_prior": (e.get("measured_rmse") or {}).get("prior_samples"),
                # per posterior sample and CG step; the count alone has no denominator
                "breakdown_pct": None if e.get("breakdown_fraction") is None else 100 * e["breakdown_fraction"],
                "loss_last": (ms.get("loss") or {}).get("last"),
                "seconds": _total_seconds(rec.get("timing", {})),
            })
            if _has_nonfinite(rec) or rec.get("prior_samples", {}).get("finite") is False \
                    or e.get("finite") is False or (q and q.get("sinkhorn") is None and "error" in q):
                flags.append("NaN/Inf")
            ratio = e.get("residual_ratio_mean")
            if ratio is not None and ratio > residual_blowup:
                flags.append(f"residual blow-up ({ratio:.3g} > {residual_blowup:g})")
            n_data, dropped = ms.get("n_data"), ms.get("dropped") or 0
            row["dropped"] = dropped
            if n_data and dropped > 0.05 * (n_data + dropped):
                share = 100 * dropped / (n_data + dropped)
                flags.append(f"{dropped} posterior samples outside mstep.max_abs ({share:.1f} %)")
            # Truncated CG meets a non-SPD Jacobian now and then (Sec. 4.2): flag only when it is common.
            frac = e.get("breakdown_fraction")
            if frac is not None and frac > breakdown_limit:
                flags.append(f"solver breakdowns in {100 * frac:.1f} % of solves")
        if lossy:
            row["lossy_samples"] = f"{'/'.join(sorted(set(lossy.values())))} ({', '.join(lossy)})"
        row["flags"] = "; ".join(flags) or "ok"
        rows.append(row)
    return pd.DataFrame(rows)


def estep_checks(results: str | Path) -> pd.DataFrame:
    """One row per variant from iter_001/metrics.json's ``estep_check`` (emprior.evaluation.estep_check)."""
    rows = []
    for m in sorted(Path(results).glob("*/*/iter_001/metrics.json")):
        try:
            c = json.loads(m.read_text()).get("estep_check")
        except json.JSONDecodeError:
            continue
        if c:
            rows.append({"experiment": m.parent.parent.parent.name, "variant": m.parent.parent.name,
                         "spread": c.get("spread"), "spread_se": c.get("spread_se"), "bias2": c.get("bias2"),
                         "bias2_se": c.get("bias2_se"), "observations": c.get("observations"),
                         "repeats": c.get("repeats")})
    return pd.DataFrame(rows)


def audit(results: str | Path) -> tuple[str, int]:
    df = audit_rows(results)
    if df.empty:
        return f"no iterations found under {results}", 1
    fmt = lambda v: f"{v:.4g}"  # noqa: E731
    text = df.to_string(index=False, float_format=fmt)
    bad = int((df["flags"] != "ok").sum())
    text += f"\n{len(df)} iterations, {bad} flagged"
    checks = estep_checks(results)
    if not checks.empty:
        text += ("\n\nIteration 1's E-step vs the exact posterior under q_0 (an exact sampler: spread 1, "
                 "bias2 0):\n" + checks.to_string(index=False, float_format=fmt))
    return text, (1 if bad else 0)
