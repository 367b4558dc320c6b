"""Shared command-line plumbing: options → TrainConfig, and one-line errors with exit status 2."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from cigl_bayes.config import DATASET_DEFAULTS, METHODS, TrainConfig
from cigl_bayes.device import HOST_ALLOCATOR_MODES, configure_host_allocator, resolve_device

# Errors that mean "bad input": reported in one line, exit status 2, nothing overwritten.
USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, KeyError)


def add_train_arguments(p: argparse.ArgumentParser, defaults: TrainConfig | None = None) -> None:
    """Options shared by the training CLIs; defaults come from :class:`TrainConfig`."""
    d = defaults or TrainConfig()
    p.add_argument("--method", default=d.method, help=f"one of: {', '.join(METHODS)} (default {d.method})")
    p.add_argument("--model", default=None,
                   help=f"model name from the registry (default {d.model}; imagenet: resnet50-imagenet)")
    p.add_argument("--dataset", default=d.dataset, help="cifar10, cifar100 or imagenet (ImageFolder train/ val/)")
    p.add_argument("--data-dir", default=d.data_dir, help="data folder (default: $CIGL_DATA_DIR)")
    p.add_argument("--download", action="store_true", help="download the data set through torchvision if missing")
    p.add_argument("--sparsity", type=float, default=d.sparsity, help="global sparsity in [0, 1)")
    p.add_argument("--distribution", default=d.distribution, help="per-layer densities: erk or uniform")
    p.add_argument("--epochs", type=int, default=None, help=f"default {d.epochs}; imagenet: 100")
    p.add_argument("--batch-size", type=int, default=None, help=f"default {d.batch_size}; imagenet: 64")
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--weight-decay", type=float, default=d.weight_decay, help="default: per model (paper)")
    p.add_argument("--lr-decay-every", type=int, default=d.lr_decay_every,
                   help="steps between lr halvings (default: paper value rescaled to the run length)")
    p.add_argument("--lr-schedule", default=d.lr_schedule, choices=["step", "cosine-window"],
                   help="step: ×0.5 every --lr-decay-every steps (paper); cosine-window: cosine down to the step "
                        "schedule's lr at T*, then held through the WMA window")
    p.add_argument("--warmup-steps", type=int, default=d.warmup_steps)
    p.add_argument("--val-fraction", type=float, default=d.val_fraction)
    p.add_argument("--subset", type=int, default=d.subset, help="train on this many images (quick runs)")
    p.add_argument("--test-subset", type=int, default=d.test_subset, help="evaluate on this many test images")
    p.add_argument("--delta-t", type=int, default=d.delta_t, help="steps between mask updates ΔT")
    p.add_argument("--drop-fraction", type=float, default=d.drop_fraction)
    p.add_argument("--update-end", type=float, default=d.update_end, help="fraction of training with mask updates")
    p.add_argument("--random-mask-rate", type=float, default=d.random_mask_rate,
                   help="1 - keep of the random mask Z (paper 0.1; official code 0.01)")
    p.add_argument("--wma-start-epoch", type=int, default=d.wma_start_epoch, help="T* (default 0.8 × epochs)")
    p.add_argument("--mixup", type=float, default=d.mixup, help="mixup α (0: off)")
    p.add_argument("--label-smoothing", type=float, default=d.label_smoothing)
    p.add_argument("--mc-samples", type=int, default=d.mc_samples)
    p.add_argument("--bn-batches", type=int, default=d.bn_batches)
    p.add_argument("--no-temperature-scaling", dest="temperature_scaling", action="store_false")
    p.add_argument("--no-samples", dest="save_samples", action="store_false", help="do not keep WMA samples on disk")
    p.add_argument("--no-augment", dest="augment", action="store_false")
    p.add_argument("--sigma", type=float, default=d.sigma, help="guide scale σ (SVI engine)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--device", default=d.device, help="auto, cpu, cuda, cuda:N")
    p.add_argument("--dtype", default=d.dtype, choices=["float32", "float64"],
                   help="parameter and input precision (float64 for numerical checks)")
    p.add_argument("--amp", default=d.amp, choices=["auto", "bf16", "off"],
                   help="bf16 autocast of the forward pass (auto: on for CUDA and CPUs with AMX-/AVX512-BF16)")
    p.add_argument("--channels-last", default=d.channels_last, choices=["auto", "on", "off"],
                   help="channels-last memory format (auto: on where --amp auto is)")
    p.add_argument("--compile", action="store_true", help="torch.compile the network forward")
    add_host_allocator_argument(p)
    p.add_argument("--log-every", type=int, default=d.log_every)
    p.add_argument("--out", default=None, help="run folder (re-running resumes)")
    p.add_argument("--no-progress", dest="progress", action="store_false")


def add_host_allocator_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host-allocator", default="auto", choices=list(HOST_ALLOCATOR_MODES),
                   help="retain: glibc keeps freed memory instead of unmapping it, saving page faults "
                        "every step; auto (default): retain when training on CPU; system: leave malloc alone")


def apply_host_allocator(args: argparse.Namespace) -> bool:
    """The process-wide allocator choice of ``--host-allocator`` for the device ``--device`` names."""
    return configure_host_allocator(args.host_allocator, resolve_device(args.device))


def config_from_args(args: argparse.Namespace, **overrides) -> TrainConfig:
    """Options → TrainConfig; options left unset (None) take the data set's defaults, then TrainConfig's."""
    fields = TrainConfig.__dataclass_fields__
    values = {k: v for k, v in vars(args).items() if k in fields}
    values.update(overrides)
    for name, value in DATASET_DEFAULTS.get(values.get("dataset", ""), {}).items():
        if values.get(name) is None:
            values[name] = value
    for name in ("model", "epochs", "batch_size"):
        if values.get(name) is None:
            values.pop(name, None)
    return TrainConfig(**values)


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
    print(f"{'predictor':<20}" + "".join(f"{c:>10}" for c in cols))
    for name, m in result["test"].items():
        print(f"{name:<20}" + "".join(f"{m[c]:>10.4f}" for c in cols))
