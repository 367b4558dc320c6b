"""Shared command-line plumbing: options → TrainConfig, and one-line errors with exit status 2."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable

from cigl_bayes.config import TrainConfig
from cigl_bayes.device import HOST_ALLOCATOR_MODES, configure_host_allocator, resolve_device

# Errors that mean "bad input": reported in one line, exit status 2, nothing overwritten.
USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError, KeyError)


class ArgumentParser(argparse.ArgumentParser):
    """argparse with its errors on one line ('error: …', exit status 2), like every other bad input.

    A ``prog`` of the form ``python -m experiments.X`` names the module as it was launched: under
    ``python -m cigl_bayes.experiments.X`` (the installed name of the same module) usage and errors
    say that."""

    def __init__(self, *args, prog: str | None = None, **kwargs):
        super().__init__(*args, prog=_launched_as(prog), **kwargs)

    def error(self, message: str):
        self.exit(2, f"error: {self.prog}: {message} (see --help)\n")


def _launched_as(prog: str | None) -> str | None:
    """``python -m <module>`` as ``__main__`` was run, where ``prog`` names that module by another
    package path (``experiments.train`` run as ``cigl_bayes.experiments.train``); else ``prog``."""
    module = prog.removeprefix("python -m ") if prog else ""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    running = getattr(spec, "name", None) or ""
    if module and module != prog and running.endswith("." + module):
        return f"python -m {running}"
    return prog


_TYPES = {"int": int, "float": float, "str": str}


def _flag(field: dataclasses.Field) -> str:
    if "flag" in field.metadata:
        return field.metadata["flag"]
    name = field.name.replace("_", "-")
    return f"--no-{name}" if field.default is True else f"--{name}"


def add_train_arguments(p: argparse.ArgumentParser, defaults: TrainConfig | None = None,
                        exclude: tuple[str, ...] = ()) -> None:
    """One option per :class:`TrainConfig` field (its ``help`` metadata is the help text), then the
    run-folder options.  Defaults come from ``defaults``; fields whose default is None (filled per
    data set or model) stay None here so that TrainConfig fills them alike from the CLI and from
    Python.  Enumerated values are checked by :meth:`TrainConfig.validate`, which names the choices."""
    d = defaults or TrainConfig()
    for field in dataclasses.fields(TrainConfig):
        if field.name in exclude or not field.metadata.get("cli", True):
            continue
        default = None if field.default is None else getattr(d, field.name)
        help_text = field.metadata["help"]
        if "choices" in field.metadata:
            help_text += f"; one of: {', '.join(field.metadata['choices'])}"
        if field.type == "bool":
            if field.default:  # a --no-… flag: its help says what it turns off
                help_text = f"turn off (on by default): {help_text}"
            p.add_argument(_flag(field), dest=field.name, action="store_false" if field.default else "store_true",
                           default=default, help=help_text)
            continue
        kind = _TYPES[field.type.replace(" | None", "")]
        if default is not None:
            help_text += f" (default: {default})"
        p.add_argument(_flag(field), dest=field.name, type=kind, default=default, help=help_text)
    add_host_allocator_argument(p)
    p.add_argument("--out", default=None, help="run folder (re-running resumes)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")


def add_host_allocator_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host-allocator", default="auto", choices=list(HOST_ALLOCATOR_MODES),
                   help="retain: glibc keeps freed memory instead of unmapping it, saving page faults "
                        "every step; auto (default): retain when training on CPU; system: leave malloc alone")


def apply_host_allocator(args: argparse.Namespace) -> bool:
    """The process-wide allocator choice of ``--host-allocator`` for the device ``--device`` names."""
    return configure_host_allocator(args.host_allocator, resolve_device(args.device))


def config_from_args(args: argparse.Namespace, **overrides) -> TrainConfig:
    """Options → TrainConfig (options left unset stay None and take TrainConfig's per-data-set defaults)."""
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    values = {k: v for k, v in vars(args).items() if k in names}
    values.update(overrides)
    return TrainConfig(**values)


def check_run_folders(runs: list) -> None:
    """Run folders given to a report: each must exist, and none may be given twice."""
    for r in runs:
        if r.is_file():
            raise NotADirectoryError(f"run folder {r} is a file, expected a run folder")
        if not r.is_dir():
            raise FileNotFoundError(f"run folder {r} does not exist")
    resolved = [r.resolve() for r in runs]
    repeated = sorted({str(r) for r in resolved if resolved.count(r) > 1})
    if repeated:
        raise ValueError(f"run {repeated[0]} is given more than once (one run is one chain, one report)")


def run_cli(main: Callable[[], int | None]) -> None:
    """Run ``main``; bad input → 'error: …' on one line and exit status 2."""
    from cigl_bayes.runs import CheckpointError, RunFolderBusy
    from cigl_bayes.train import TrainingDiverged

    try:
        sys.exit(main() or 0)
    except TrainingDiverged as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
    except (*USER_ERRORS, CheckpointError, RunFolderBusy) as err:
        message = " ".join(line.strip() for line in str(err).splitlines() if line.strip()) or type(err).__name__
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt as err:
        print(f"stopped: {err or 'interrupted'}", file=sys.stderr)
        sys.exit(130)


def print_results(result: dict) -> None:
    """A short table of the test metrics per predictor."""
    cols = ("accuracy", "ece", "ece10", "nll", "brier")
    print(f"\n{result['method']} ({result['engine']}) · {result['model']} · sparsity {result['sparsity_target']} "
          f"(actual {result['sparsity_actual']:.4f}) · output: {result['output_predictor']}")
    print(f"{'predictor':<20}" + "".join(f" {c:>10}" for c in cols))
    for name, m in result["test"].items():  # .4g past 1e5: a diverged NLL must not run into its neighbours
        print(f"{name:<20}" + "".join(f" {m[c]:>10.4f}" if abs(m[c]) < 1e5 else f" {m[c]:>10.4g}" for c in cols))
