"""Tables and figures with the paper's numbers side by side.

The paper's values ship in ``emprior/report/paper_tables/*.csv`` (diem-arxiv Tables 1, 4, 5; the peers'
published CIFAR-10 numbers in ``table1_peers.csv``). Our
numbers are measured by the DAG; where a metric cannot be computed honestly (e.g. FID without the
Inception weights) the cell says why instead of holding a number.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

import numpy as np
import pandas as pd

from emprior.core.artifacts import save_figure, save_text, verify
from emprior.evaluation.iteration import read_metrics
from emprior.report.intervals import t_interval
from emprior.report.markdown import pipe_table

COVARIANCE_LABEL = {"tweedie": "tweedie", "inv": "(I+Sigma_t^-1)^-1", "sigma_t": "Sigma_t",
                    "prior": "(Sigma_x^-1+Sigma_t^-1)^-1"}


def paper_table(name: str) -> pd.DataFrame:
    with resources.files("emprior.report.paper_tables").joinpath(f"{name}.csv").open() as f:
        return pd.read_csv(f)


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "n/a"
    if isinstance(v, float):
        return f"{v:.{digits}g}" if abs(v) < 1e-2 else f"{v:.{digits}f}".rstrip("0").rstrip(".")
    return str(v)


# the quality metrics shown with their interval over seeds, each seed's value and q_0's value
SEED_METRICS = ("sinkhorn", "fd_digits", "fid")


def seed_of(path: str) -> int | None:
    """The seed a metrics.json was computed with (its provenance), None if not recorded."""
    seed = verify(path).get("provenance", {}).get("seed")
    return None if seed is None else int(seed)


def _over_seeds(values: list[Any]) -> tuple[float | None, float | None, str]:
    """(mean, 95 % half-width, each seed's value 'a; b; c') of one value per seed (None: not measured)."""
    finite = [float(v) for v in values if v is not None and np.isfinite(v)]
    if not finite:
        return None, None, "n/a"
    mean, half = t_interval(finite)
    return mean, (half if np.isfinite(half) else None), "; ".join(_fmt(v) for v in values)


def table1_frame(config: dict[str, Any], metrics_paths: list[str]) -> pd.DataFrame:
    """Final-iteration sample quality per variant (one row per EM method and variant), next to the
    published number for that method and setting where its paper has one (diem-arxiv Table 1; the
    peers' own papers), with the clean examples each method saw, q_0's score (the first iteration among
    ``metrics_paths``: iteration 0 for a method with an initial prior) beside the final one, and the
    iteration-1 E-step check (``estep_check``: spread, bias2 vs the exact posterior) where an
    iteration-1 metrics.json is among ``metrics_paths``; then the published rows of methods at settings
    not run here.

    Several seeds (``seeds``, :mod:`emprior.config.seeds`; a record's seed is its provenance's): a
    number is the mean over seeds, ``<metric>_ci95`` the half-width of its 95 % Student-t interval
    (:func:`emprior.report.intervals.t_interval`; empty for one seed) and ``<metric>_per_seed`` each
    seed's value, seeds in increasing order. One seed gives the numbers of that seed's run."""
    from emprior.methods import make_method

    records = read_metrics(metrics_paths)
    seeds = [seed_of(p) for p in metrics_paths]
    paper = pd.concat([paper_table("table1"), paper_table("table1_peers")], ignore_index=True)
    final: dict[tuple[str, str], dict[Any, dict[str, Any]]] = {}
    first: dict[tuple[str, str], dict[Any, dict[str, Any]]] = {}
    checks: dict[tuple[str, str], dict[Any, dict[str, Any]]] = {}
    for rec, seed in zip(records, seeds):
        key = (rec["experiment"], rec["variant"])
        if rec.get("estep_check"):
            checks.setdefault(key, {})[seed] = rec["estep_check"]
        last, head = final.setdefault(key, {}), first.setdefault(key, {})
        if seed not in last or rec["iteration"] > last[seed]["iteration"]:
            last[seed] = rec
        if seed not in head or rec["iteration"] < head[seed]["iteration"]:
            head[seed] = rec
    rows = []
    for key, by_seed in final.items():
        runs = sorted(by_seed, key=lambda s: -1 if s is None else s)
        finals = [by_seed[s] for s in runs]
        q0s = [first[key][s] for s in runs]
        rec = finals[0]
        exp = config["experiments"][rec["experiment"]]
        method = make_method(exp["variants"][rec["variant"]], exp)
        deleted = exp["observation"].get("options", {}).get("deleted")
        cov = COVARIANCE_LABEL.get(method.table_covariance(), method.table_covariance())
        match = paper[(paper.method == method.label)]
        match = match[match.covariance == cov] if cov is not None else match[match.covariance.isna()]
        if deleted is not None:
            close = match[np.isclose(match.deleted, deleted)]
            # DiEM's own paper covers every setting of its ablation; a peer's number only where it matches
            match = close if len(close) or method.label != "DiEM" else match
        row: dict[str, Any] = {
            "method": method.label, "variant": rec["variant"], "covariance": cov, "clean_data": method.clean_data(),
            "dataset": exp["dataset"]["name"], "deleted": deleted, "seeds": len(runs),
            "q0_iteration": q0s[0]["iteration"], "iterations": rec.get("em_iterations", rec["iteration"])}
        for name in ("sinkhorn", "fd_digits", "is_digits", "fid", "is"):
            mean, half, each = _over_seeds([r.get("quality", {}).get(name) for r in finals])
            if name in SEED_METRICS:
                q0, q0_half, _ = _over_seeds([r.get("quality", {}).get(name) for r in q0s])
                row.update({f"q0_{name}": q0, f"q0_{name}_ci95": q0_half})
            row[name] = mean
            if name in SEED_METRICS:
                row.update({f"{name}_ci95": half, f"{name}_per_seed": each})
        row["fid_status"] = rec.get("quality", {}).get("fid_status", "n/a: not an image set")
        row.update({
            "paper_fid": float(match.fid.iloc[0]) if len(match) else None,
            "paper_is": float(match["is"].iloc[0]) if len(match) and pd.notna(match["is"].iloc[0]) else None,
            "paper_deleted": float(match.deleted.iloc[0]) if len(match) else None,
            "paper_source": match.source.iloc[0] if len(match) else None})
        for name in ("bias2", "spread"):
            check = [checks.get(key, {}).get(s) for s in runs]
            row[f"estep_{name}_it1"] = _over_seeds([c.get(name) for c in check if c])[0]
        rows.append(row)
    for _, p in paper[paper.method != "DiEM"].iterrows():
        rows.append({"method": p.method, "variant": None, "covariance": None, "clean_data": None,
                     "dataset": "cifar10 (paper only)", "deleted": None, "iterations": None, "sinkhorn": None,
                     "fd_digits": None, "is_digits": None, "fid": None, "is": None,
                     "fid_status": "published; not run at this setting", "paper_fid": p.fid,
                     "paper_is": p["is"] if pd.notna(p["is"]) else None, "paper_deleted": p.deleted,
                     "paper_source": p.source, "estep_bias2_it1": None, "estep_spread_it1": None})
    columns = list(dict.fromkeys(c for r in rows for c in r))  # the measured rows' order; paper rows: empty
    return pd.DataFrame(rows, columns=columns)


def write_table(df: pd.DataFrame, out_csv: str, out_md: str, out_tex: str, provenance: dict[str, Any],
                caption: str) -> None:
    save_text(out_csv, df.to_csv(index=False), provenance)
    shown = df.map(_fmt)
    table = "".join(line + "\n" for line in pipe_table(list(shown.columns), shown.astype(str).values.tolist()))
    save_text(out_md, f"{caption}\n\n{table}", provenance)
    tex = shown.to_latex(index=False, caption=caption, escape=True)
    save_text(out_tex, tex, provenance)


QUALITY_METRICS = (("fid", "FID"), ("fd_digits", "FD, digits-classifier features"),
                   ("sinkhorn", "Sinkhorn divergence to truth"))


def metric_curves(config: dict[str, Any], experiment: str, metrics_paths: list[str], out: str,
                  provenance: dict[str, Any], quality_only: bool = False) -> None:
    """Sample quality (Sinkhorn, FID when available) and E-step consistency along EM iterations.

    ``quality_only``: the paper's Fig. 4, one panel with the quality metric only (the first of FID,
    fd_digits, Sinkhorn that the records have), one line per variant labelled with its method; with
    records of several seeds (their provenance's seed) the line is the mean over seeds and the band its
    95 % Student-t interval (:func:`emprior.report.intervals.t_interval`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    records = read_metrics(metrics_paths)
    rows = []
    for r, path in zip(records, metrics_paths):
        rows.append({"variant": r["variant"], "iteration": r["iteration"], "seed": seed_of(path),
                     "sinkhorn": r.get("quality", {}).get("sinkhorn"),
                     "fid": r.get("quality", {}).get("fid"),
                     "fd_digits": r.get("quality", {}).get("fd_digits"),
                     "residual_ratio": r.get("estep", {}).get("residual_ratio_mean")})
    df = pd.DataFrame(rows).sort_values(["variant", "iteration"])
    hue = "variant"
    if quality_only:
        from emprior.methods import make_method

        exp = config["experiments"][experiment]
        label = {v: f"{make_method(exp['variants'][v], exp).label}: {v}" for v in df["variant"].unique()}
        df["label"] = df["variant"].map(label)
        # the legend in the order of the given files (the rule lists the variants in the config's order)
        order = {v: i for i, v in enumerate(dict.fromkeys(r["variant"] for r in records))}
        df = df.sort_values(["variant", "iteration"], key=lambda c: c.map(order) if c.name == "variant" else c)
        hue = "label"
        panels = [next(((c, t) for c, t in QUALITY_METRICS if df[c].notna().any()), QUALITY_METRICS[-1])]
    else:
        panels = [("sinkhorn", "Sinkhorn divergence to truth"), ("residual_ratio", "E-step ||y-Ax||²/(m Σy)")]
        if df["fid"].notna().any():
            panels.insert(1, ("fid", "FID"))
        if df["fd_digits"].notna().any():
            panels.insert(1, ("fd_digits", "FD, digits-classifier features"))
    from matplotlib.ticker import MaxNLocator

    from emprior.report.palette import style, variant_key

    exp_variants = config["experiments"][experiment]["variants"]
    by_variant = {v: style(variant_key(exp_variants.get(v, {}))) for v in df["variant"].unique()}
    names = list(dict.fromkeys(df[hue]))  # legend entries, in the order of the given files
    variant_of = dict(zip(df[hue], df["variant"]))
    palette = {n: by_variant[variant_of[n]]["color"] for n in names}
    markers = {n: by_variant[variant_of[n]]["marker"] for n in names}
    sns.set_theme(style="whitegrid")
    fig, axes = plt.subplots(1, len(panels), figsize=(7.6, 4.0) if quality_only else (4.2 * len(panels) + 2.2, 3.6))
    for ax, (col, title) in zip(np.atleast_1d(axes), panels):
        sub = df.dropna(subset=[col])
        if len(sub):
            # one colour and marker per method in every panel and figure (emprior.report.palette)
            sns.lineplot(data=sub, x="iteration", y=col, hue=hue, style=hue, markers=markers, dashes=False,
                         ax=ax, errorbar=None, estimator="mean", palette=palette, hue_order=names, style_order=names)
        if len(sub) and quality_only:
            for label in dict.fromkeys(sub[hue]):
                band = [(k, *t_interval(g[col].tolist())) for k, g in sub[sub[hue] == label].groupby("iteration")]
                k, mean, half = (np.asarray(c, dtype=np.float64) for c in zip(*band))
                if np.isfinite(half).any():  # several seeds
                    ax.fill_between(k, mean - half, mean + half, color=palette[label], alpha=0.2, linewidth=0)
        elif len(sub) and (sub[col] > 0).all():
            ax.set_yscale("log")
        ax.set_title(title)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # EM iterations are integers
        ax.set_xlabel("EM iteration k")
        ax.set_ylabel(title)
        if ax.get_legend() is not None:
            ax.get_legend().remove()
    handles, labels = np.atleast_1d(axes)[0].get_legend_handles_labels()
    if not handles:
        for ax in np.atleast_1d(axes)[1:]:
            handles, labels = ax.get_legend_handles_labels()
            if handles:
                break
    if handles:  # one legend, outside the data
        fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, frameon=False)
    n_seeds = df["seed"].nunique(dropna=False)
    over = f"\n(mean and 95 % t-interval over {n_seeds} seeds)" if n_seeds > 1 else ""
    fig.suptitle(f"Fig. 4, {experiment}: quality of samples of q_k against the clean data, along EM iterations{over}"
                 if quality_only else
                 f"{experiment}: samples of q_k against the clean data, and how well E-step samples fit y, "
                 f"along EM iterations{over}", fontsize=10)
    fig.tight_layout()
    save_figure(out, fig, provenance, bbox_inches="tight")  # keep the legend outside the axes
    plt.close(fig)


def manifold_marginals(samples_by_iter: dict[int, np.ndarray], truth: np.ndarray, out: str,
                       provenance: dict[str, Any], pairs: tuple[tuple[int, int], ...] = ((0, 1), (2, 3), (1, 4))
                       ) -> None:
    """Figure 3: 2-d marginals of q_k along EM iterations next to the ground truth."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    iters = sorted(samples_by_iter)
    cols = len(iters) + 1
    fig, axes = plt.subplots(len(pairs), cols, figsize=(2.2 * cols, 2.2 * len(pairs)), squeeze=False)
    lim = np.quantile(np.abs(truth), 0.995) * 1.3
    for r, (i, j) in enumerate(pairs):
        for c, k in enumerate(iters + ["truth"]):
            x = truth if k == "truth" else samples_by_iter[k]
            ax = axes[r, c]
            ax.hist2d(x[:, i], x[:, j], bins=64, range=[[-lim, lim], [-lim, lim]], cmap="viridis")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title("truth" if k == "truth" else f"q_{k}")
            if c == 0:
                ax.set_ylabel(f"x{j} vs x{i}")
    fig.tight_layout()
    save_figure(out, fig, provenance)
    plt.close(fig)
