"""Inputs a job refuses: an artifact that another job's config, experiment, variant, seed or iteration
made, or that another rule made.

Every artifact's sidecar holds the provenance of the job that wrote it (``experiment``, ``variant``,
``iteration``, ``seed``, ``rule``: :meth:`emprior.core.job.Job.provenance`). A job checks each input's
record against what it expects before loading it, so ``prior-samples`` given the manifold's model.pt, or
an E-step of iteration 2 given the model of iteration 3, stops with one line naming the file and the
field, instead of writing samples of the wrong thing (or failing later with a traceback). Artifacts
written before a field was recorded (older runs) are not refused for its absence.
"""

from __future__ import annotations

import json
from typing import Any

from emprior.core.artifacts import sidecar, verify
from emprior.core.errors import ArtifactError
from emprior.core.job import Job


def check_input(job: Job, path: str | None, what: str, rules: tuple[str, ...], iteration: int | None = None,
                same_variant: bool = True) -> dict[str, Any]:
    """Check that ``path``'s provenance says it was made for this job's experiment (and seed and variant,
    if ``same_variant``: data files are shared by the variants), at ``iteration`` (when given), by one of
    ``rules``; returns the sidecar record. Reads the sidecar only: the loader that follows verifies the
    checksum (a missing file or sidecar is :func:`verify`'s one line). ``what`` names the input
    (``--model``). ``None`` (an optional input not given) is accepted."""
    if path is None:
        return {}
    try:
        record = json.loads(sidecar(path).read_text())
    except (OSError, ValueError):
        return verify(path)  # raises its one-line error (missing file, no or corrupt sidecar)
    prov = record.get("provenance") or {} if isinstance(record, dict) else {}
    expected: dict[str, Any] = {"experiment": job.experiment}
    if same_variant and job.variant is not None:
        expected["variant"] = job.variant
        expected["seed"] = job.seed
    if iteration is not None:
        expected["iteration"] = int(iteration)
    for field, want in expected.items():
        if want is None or field not in prov:
            continue
        got = prov[field]
        if got != want:
            raise ArtifactError(f"{path}: {what} was made for {field} {got!r}, this job ({job.context}) needs "
                                f"{field} {want!r} (provenance field '{field}')")
    rule = prov.get("rule")
    if rules and rule is not None and rule not in rules:
        raise ArtifactError(f"{path}: {what} was made by rule {rule!r}, this job reads one made by "
                            f"{' or '.join(repr(r) for r in rules)} (provenance field 'rule')")
    return record


def check_shard(job: Job, shard: int, shards: int, what: str = "--shard") -> None:
    """A shard index in range, as one line."""
    if isinstance(shard, bool) or not isinstance(shard, int) or not 0 <= shard < shards:
        raise ArtifactError(f"{what} {shard!r}: out of range for experiments.{job.experiment} with {shards} "
                            f"shards (0 to {shards - 1})")


def check_iteration(job: Job, first: int = 0, extra: int = 0) -> None:
    """The job's --iteration within the experiment's EM iterations (``first`` to ``iterations`` +
    ``extra``: 1 where a method's final stage runs the same command as iteration K + 1)."""
    k = job.iteration
    last = int(job.exp["iterations"]) + extra
    if k is None or not first <= int(k) <= last:
        raise ArtifactError(f"--iteration {k!r}: out of range for experiments.{job.experiment} "
                            f"({first} to {last})")
