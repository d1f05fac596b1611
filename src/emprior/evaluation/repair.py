"""``python -m emprior repair RESULTS_DIR``: remove the damaged artifacts that the audit flags, so that
rerunning the workflow rebuilds them and what was derived from them.

Snakemake reruns a job whose output is missing (every artifact kept for audit is a target of ``all``,
``rules/common.smk``) or older than its inputs; it cannot see a file whose bytes were changed in place.
The sidecars can (:func:`emprior.evaluation.audit.artifact_problems`: missing, truncated, modified, or
written without its sidecar). Removing such a file turns it into a missing target: the next run rebuilds
it (the same bytes: seeds are fixed) and, the file being new, every job that reads it. Run it while no
workflow writes into the folder."""

from __future__ import annotations

import contextlib
from pathlib import Path

from emprior.core.artifacts import sidecar
from emprior.evaluation.audit import artifact_problems


def repair(results: str | Path, checksum: bool = True) -> tuple[str, int]:
    """Remove every flagged artifact (and its sidecar); the text says what went and the one command to
    run next. Exit status 0 (also when nothing was damaged), 2 when the folder does not exist."""
    root = Path(results)
    if not root.is_dir():
        return f"error: {results}: no such results folder", 2
    problems = artifact_problems(root, checksum=checksum)
    if problems.empty:
        return f"{results}: every artifact with a sidecar is intact; nothing to repair", 0
    lines = []
    for rel, problem in zip(problems["file"], problems["problem"]):
        art = root / rel
        for p in (art, sidecar(art)):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
        lines.append(f"removed {rel} ({problem})")
    lines.append(f"{len(problems)} artifacts removed; rebuild them and what depends on them with the command "
                 "that made the folder: snakemake -c all all (CPU preset) or snakemake --profile slurm all")
    return "\n".join(lines), 0
