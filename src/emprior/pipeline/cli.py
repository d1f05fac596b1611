"""``python -m emprior COMMAND``: one command per Snakemake rule, generated from the pipeline
functions' signatures (:mod:`emprior.pipeline.commands`), plus ``audit``, ``validate-config`` and ``rerun``.

Errors from bad input are printed as a single line ``error: ...`` naming the file, key or value, with
exit status 2; nothing partial is left behind (artifacts are written atomically). A full disk or quota
is one line ``error: ...`` naming the file, the bytes it needed and the bytes free, with exit status 1.
Every artifact's sidecar records the command line and job config of the job that wrote it, and
``rerun ARTIFACT`` runs that job again into a temporary folder and compares bytes. A job stopped by
SIGTERM (SLURM's warning before its time limit) after saving its progress prints one line
``preempted: ...`` and exits with status 143 (:data:`emprior.core.preempt.EXIT_PREEMPTED`), so that
Snakemake's retry continues from the saved state."""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import sys
import typing
from pathlib import Path
from typing import Any

from emprior.core.errors import DiskFullError, EmpriorError, Preempted
from emprior.core.preempt import EXIT_PREEMPTED
from emprior.pipeline.commands import COMMANDS, Command

DESCRIPTION = ("Run one step of the emprior workflow (one command per Snakemake rule), audit a results folder, "
               "validate config files, or rerun the job that wrote an artifact and compare bytes.")

# the modules whose functions are the rule commands
MODULES = ("data", "em", "final", "evaluate", "report", "plan", "table4_ffhq", "mri")


def load_any_config(path: str) -> dict[str, Any]:
    """A YAML config (validated) or the JSON job config that the Snakefile wrote (validated there);
    either way the config's ``plugins`` are imported, so their plug-ins are registered."""
    from emprior.config.loading import load_config
    from emprior.config.plugins import load_plugins

    p = Path(path)
    if p.suffix == ".json":
        try:
            config = json.loads(p.read_text())
        except FileNotFoundError:
            raise EmpriorError(f"{p}: job config not found") from None
        except json.JSONDecodeError as exc:
            raise EmpriorError(f"{p}: invalid JSON job config ({exc})") from None
        load_plugins(config.get("plugins", []), source=str(p))
        return config
    return load_config(p)


def _arguments(cmd: Command) -> list[tuple[str, dict[str, Any]]]:
    """(flag or positional name, add_argument keywords) for a command's parameters after ``job``."""
    sig = inspect.signature(cmd.func)
    hints = typing.get_type_hints(cmd.func)
    out = []
    for name, param in list(sig.parameters.items())[1:]:
        tp = hints.get(name, str)
        if typing.get_origin(tp) is list:
            # a list with a default may be empty (e.g. table4-ffhq without cells)
            out.append((name, {"nargs": "*" if param.default is not inspect.Parameter.empty else "+"}))
            continue
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        base = args[0] if args else tp
        kw: dict[str, Any] = {"type": base} if base is int else {}
        if param.default is inspect.Parameter.empty:
            kw["required"] = True
        else:
            kw["default"] = param.default
        out.append(("--" + name.replace("_", "-"), kw))
    return out


def _import_commands() -> None:
    for mod in MODULES:
        importlib.import_module(f"emprior.pipeline.{mod}")


def build_parser() -> argparse.ArgumentParser:
    _import_commands()
    parser = argparse.ArgumentParser(prog="python -m emprior", description=DESCRIPTION)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for cmd in COMMANDS.values():
        p = sub.add_parser(cmd.name, help=cmd.help)
        p.add_argument("--config", required=True, help="A YAML config (validated) or a job config JSON.")
        p.add_argument("--threads", type=int, default=None,
                       help="The torch intra-op threads of this process, of each process under torchrun "
                            "(default: the config's torch_threads).")
        for ident in cmd.ids:
            p.add_argument(f"--{ident}", required=True, type=int if ident == "iteration" else str)
        for flag, kw in _arguments(cmd):
            p.add_argument(flag, **kw)
    p = sub.add_parser("audit", help="Print one row per EM iteration, check every artifact against its sidecar "
                                     "and flag anomalies (exit status 0: none, 1: flags, 2: unreadable folder).")
    p.add_argument("results", help="The results folder (e.g. results/).")
    p.add_argument("--no-checksum", action="store_true",
                   help="Check presence and size only, not the sha256 (faster on a paper-scale folder).")
    p = sub.add_parser("repair", help="Remove the artifacts the audit finds missing, truncated or modified, so "
                                      "that rerunning the workflow rebuilds them and what depends on them.")
    p.add_argument("results", help="The results folder (e.g. results/).")
    p.add_argument("--no-checksum", action="store_true", help="Find damage by size only.")
    p = sub.add_parser("validate-config", help="Validate YAML config files against the generated schema.")
    p.add_argument("configs", nargs="+", help="The YAML config files.")
    p = sub.add_parser("rerun", help="Run the job that wrote an artifact again, from its sidecar's command line, "
                                     "into a temporary folder, and say whether the bytes are identical "
                                     "(exit status 0) or which arrays differ (exit status 1).")
    p.add_argument("artifact", help="The artifact (e.g. results/digits/diem_tweedie/iter_001/model.pt).")
    p.add_argument("--keep", default=None, help="A folder to keep the rerun's files in (default: a temporary "
                                                "folder, removed afterwards).")
    return parser


def run(args: argparse.Namespace, argv: list[str] | None = None) -> int:
    from emprior.core.artifacts import set_job
    from emprior.core.log import get_logger

    log = get_logger("emprior")
    if args.command == "audit":
        from emprior.evaluation.audit import audit

        text, status = audit(args.results, checksum=not args.no_checksum)
        print(text)
        return status
    if args.command == "repair":
        from emprior.evaluation.repair import repair

        text, status = repair(args.results, checksum=not args.no_checksum)
        print(text)
        return status
    if args.command == "rerun":
        from emprior.pipeline.rerun import rerun

        text, status = rerun(args.artifact, keep=args.keep)
        print(text)
        return status
    if args.command == "validate-config":
        from emprior.config.loading import load_config

        load_config(*args.configs)
        print(f"ok: {', '.join(args.configs)}")
        return 0

    cmd = COMMANDS[args.command]
    set_job(argv if argv is not None else [], args.config)
    config = load_any_config(args.config)
    if cmd.torch:
        import torch

        # under torchrun: the threads of each process (SLURM gives the M-step cpus_per_gpu per GPU)
        threads = args.threads or config.get("torch_threads", 1)
        torch.set_num_threads(threads)
        # Subnormal floats (SiLU of very negative inputs, tiny gradients) slow CPU kernels a lot
        # (benchmarks/denormals.py measures it).
        torch.set_flush_denormal(True)
    log.info("%s %s", args.command, " ".join(f"{k}={v}" for k, v in vars(args).items() if k != "command"))
    from emprior.core.job import Job

    ids = {i: getattr(args, i) for i in cmd.ids}
    if "experiment" in ids:  # a seed's branch <experiment>/seed_<s>: its job config carries seed s
        from emprior.config.seeds import split_branch

        ids["experiment"] = split_branch(ids["experiment"])[0]
    job = Job(config, **ids)
    params = list(inspect.signature(cmd.func).parameters)[1:]
    cmd.func(job, **{p: getattr(args, p) for p in params})
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser().parse_args(argv)
        return run(args, argv)
    except Preempted as exc:
        print(f"preempted: {exc}", file=sys.stderr)
        return EXIT_PREEMPTED
    except DiskFullError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except EmpriorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
