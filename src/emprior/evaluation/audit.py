"""``python -m emprior audit RESULTS_DIR``: one row per EM iteration from its metrics.json, with
anomalies flagged: NaN/Inf anywhere, a residual blow-up in the E-step, solver breakdowns, > 5 % of
posterior samples left out of the M-step by mstep.max_abs, missing or tampered artifacts, missing
shard files. Iterations whose samples were stored in a lossy dtype (``storage.dtype: float16``, from
the files' provenance) get a ``lossy_samples`` column naming the dtype and files; none otherwise.

Then every artifact that has a sidecar anywhere in the folder (data, shards, posterior, models,
samples, metrics, tables, figures) is checked for presence, size and checksum
(:func:`artifact_problems`), and the arithmetic the jobs ran with (:func:`arithmetic`).

Exit status: 0 nothing flagged, 1 something flagged (each flag is explained in the README), 2 the
folder could not be read (absent, or no EM iteration in it). A value the table cannot give prints
``n/a``, and a line under the table says why for each column that has one."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import pandas as pd

from emprior.core.artifacts import SIDE, sidecar, verify
from emprior.core.errors import ArtifactError
from emprior.core.reproducibility import signature

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
    # <experiment>/<variant>/iter_k, or <experiment>/seed_<s>/<variant>/iter_k (several seeds)
    it_dirs = sorted(p for g in ("*/*/iter_*", "*/seed_*/*/iter_*") for p in results.glob(g) if ITER.search(p.name))
    last = {}
    for it_dir in it_dirs:
        last[it_dir.parent] = max(last.get(it_dir.parent, 0), int(ITER.search(it_dir.name).group(1)))
    # a method's final stage (<variant>/final/, e.g. DiffEM's) is audited as the iteration after the last
    finals = sorted(p for p in results.glob("**/final") if p.is_dir() and p.parent in last)
    for it_dir in it_dirs + finals:
        experiment, variant = it_dir.parent.parent.relative_to(results).as_posix(), it_dir.parent.name
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
    found = (p for g in ("*/*/iter_001/metrics.json", "*/seed_*/*/iter_001/metrics.json")
             for p in Path(results).glob(g))
    for m in sorted(found):
        try:
            c = json.loads(m.read_text()).get("estep_check")
        except json.JSONDecodeError:
            continue
        if c:
            rows.append({"experiment": m.parent.parent.parent.relative_to(results).as_posix(),
                         "variant": m.parent.parent.name,
                         "spread": c.get("spread"), "spread_se": c.get("spread_se"), "bias2": c.get("bias2"),
                         "bias2_se": c.get("bias2_se"), "observations": c.get("observations"),
                         "repeats": c.get("repeats")})
    return pd.DataFrame(rows)


def arithmetic(results: str | Path) -> pd.DataFrame:
    """How the run's jobs did their arithmetic, from every sidecar's ``arithmetic`` record
    (:func:`emprior.core.reproducibility.record`): one row per kind, with the number of artifacts. Under
    the portable pins the processor does not matter; unpinned jobs are told apart by processor model and
    the vector extension ATen dispatched to."""
    counts: dict[tuple[str, str, str], int] = {}
    for side in Path(results).rglob("*.prov.json"):
        if any(part in (".config", "logs", "benchmarks") for part in side.parts):
            continue
        try:
            rec = json.loads(side.read_text()).get("arithmetic")
        except (OSError, json.JSONDecodeError, AttributeError):
            continue
        if rec is None:
            key = ("(not recorded)", "-", "-")
        else:
            proc, mode, aten = signature(rec)
            key = ("portable", "any", "avx2") if mode == "portable" else (mode, proc, aten)
        counts[key] = counts.get(key, 0) + 1
    return pd.DataFrame([{"dispatch": m, "processor": p, "aten": a, "artifacts": n}
                         for (m, p, a), n in sorted(counts.items())])


SKIP_PARTS = (".config", "logs", "benchmarks", ".snakemake")

# why a column of the iteration table can have no value (n/a)
NA_REASONS = {
    "sinkhorn": "not computed for this experiment's data, or the samples were not finite",
    "residual_ratio": "iteration 0, or a method without an E-step",
    "residual_median": "iteration 0, or a method without an E-step",
    "breakdown_pct": "no linear solve (iteration 0, a method without an E-step, or a sampler without CG/GMRES)",
    "loss_last": "iteration 0 of a Gaussian q_0 (fitted in closed form, no training loss)",
    "seconds": "no timing recorded",
    "dropped": "no M-step record",
    "fid": "evaluate.fid is off for this experiment, or the Inception weights are missing (metrics.json "
           "quality.fid_status says which)",
    "lossy_samples": "samples stored lossless (float32)",
}


def artifact_problems(results: str | Path, checksum: bool = True) -> pd.DataFrame:
    """Every artifact with a sidecar under ``results`` (logs, benchmarks, job configs aside): missing,
    of another size than recorded, or (``checksum``) with another sha256; also an artifact whose
    sidecar is missing or unreadable (a write that did not finish). One row per problem."""
    from emprior.core.digest import sha256_file

    root = Path(results)
    rows = []
    seen = set()
    for side in sorted(root.rglob(f"*{SIDE}")):
        if any(part in SKIP_PARTS for part in side.relative_to(root).parts):
            continue
        art = Path(str(side)[: -len(SIDE)])
        seen.add(art)
        rel = art.relative_to(root).as_posix()
        try:
            rec = json.loads(side.read_text())
        except (OSError, ValueError):
            rows.append({"file": rel, "problem": "unreadable sidecar"})
            continue
        if not art.exists():
            rows.append({"file": rel, "problem": "missing (its sidecar is there)"})
        elif rec.get("size") is not None and art.stat().st_size != rec["size"]:
            rows.append({"file": rel, "problem": f"size {art.stat().st_size} bytes, recorded {rec['size']} (truncated "
                                                 f"or modified)"})
        elif checksum and sha256_file(art) != rec.get("sha256"):
            rows.append({"file": rel, "problem": "checksum mismatch (modified)"})
    for art in sorted(p for pat in ("*.h5", "*.pt", "*.json", "*.csv", "*.png") for p in root.rglob(pat)):
        rel_parts = art.relative_to(root).parts
        if art in seen or str(art).endswith(SIDE) or art.name.endswith(".resume.pt") \
                or any(part in SKIP_PARTS or part.endswith(".blocks") for part in rel_parts):
            continue
        if art.name.startswith(".") or art.name.startswith("plan-"):
            continue
        if not sidecar(art).exists() and _is_artifact_dir(art.parent):
            rows.append({"file": art.relative_to(root).as_posix(), "problem": "no sidecar (its job did not finish)"})
    return pd.DataFrame(rows, columns=["file", "problem"])


def _is_artifact_dir(folder: Path) -> bool:
    """A folder the workflow writes sidecar'd artifacts into (one of its files has a sidecar)."""
    return any(folder.glob(f"*{SIDE}"))


def _na_lines(df: pd.DataFrame) -> list[str]:
    lines = []
    for col in df.columns:
        if col in ("flags", "experiment", "variant", "iteration"):
            continue
        if df[col].isna().any():
            lines.append(f"  {col}: {NA_REASONS.get(col, 'not recorded for this iteration')}")
    return lines


def audit(results: str | Path, checksum: bool = True) -> tuple[str, int]:
    """The audit's text and exit status (0 nothing flagged, 1 flags, 2 unreadable folder)."""
    if not Path(results).is_dir():
        return f"error: {results}: no such results folder", 2
    df = audit_rows(results)
    if df.empty:
        return f"error: {results}: no EM iteration found (no <experiment>/<variant>/iter_k folder)", 2
    fmt = lambda v: f"{v:.4g}"  # noqa: E731
    if "evaluated" in df:  # only set (False) where evaluate.iterations left the iteration out
        df["evaluated"] = df["evaluated"].astype(object).where(df["evaluated"].notna(), True)
    na = _na_lines(df)
    shown = df.astype(object).where(df.notna(), "n/a")
    text = shown.to_string(index=False, float_format=fmt,
                           formatters={c: (lambda v: v if isinstance(v, str) else fmt(v))
                                       for c in df.columns if df[c].dtype.kind == "f"})
    bad = int((df["flags"] != "ok").sum())
    text += f"\n{len(df)} iterations, {bad} flagged"
    if na:
        text += "\nn/a:\n" + "\n".join(na)
    problems = artifact_problems(results, checksum=checksum)
    if problems.empty:
        text += "\n\nfiles: every artifact with a sidecar is present, of its recorded size and checksum"
    else:
        bad += len(problems)
        text += (f"\n\nFLAG files: {len(problems)} damaged or incomplete artifacts (python -m emprior repair "
                 f"{results} removes them; then rerun the workflow):\n" + problems.to_string(index=False))
    checks = estep_checks(results)
    if not checks.empty:
        text += ("\n\nIteration 1's E-step vs the exact posterior under q_0 (an exact sampler: spread 1, "
                 "bias2 0):\n" + checks.to_string(index=False, float_format=fmt))
    kinds = arithmetic(results)
    mixed = len(kinds) > 1
    if mixed:
        bad += 1
        text += ("\n\nFLAG mixed arithmetic: the run's artifacts were computed with different processor "
                 "dispatch (docs/reproducibility.md); rerun the minority with the same pins to get one "
                 "run's bytes:\n" + kinds.to_string(index=False))
    elif not kinds.empty:
        row = kinds.iloc[0]
        text += f"\n\narithmetic: {row['dispatch']} dispatch (processor {row['processor']}), all {row['artifacts']} artifacts"
    return text, (1 if bad else 0)
