"""Typed configuration: methods are configurations of one trainer, not subclasses.

Defaults follow the CigL paper (Lei et al., ICLR 2023, §5 and App. D) and its official code
(StevenBoys/CigL, built on the rigl-reproducibility code); ``docs/defaults.md`` lists each one
with its source.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch

from .device import fast_path_available
from .masks import MaskSchedule
from .random_mask import check_keep
from .sparsity import DISTRIBUTIONS, check_sparsity


@dataclass(frozen=True)
class MethodConfig:
    """What distinguishes one training method from another."""

    name: str
    sparse: bool = True
    regrowth: str = "gradient"  # "gradient" (RigL), "random" (SET), "none" (static / dense)
    random_mask: bool = False  # Z ~ Bernoulli(keep) on every step (CigL)
    rescale_random_mask: bool = False  # Z / keep: weight dropout (DropConnect) instead of CigL's mask
    wma: bool = False  # weight & mask averaging from epoch T*
    snapshots: bool = False  # keep the samples M⊙Z⊙W from T* and predict by averaging their softmax
    activation_dropout: bool = False  # dropout layers, kept on at test (MC dropout)
    output: str = "final"  # predictor whose weights are written to model.pt / drive temperature scaling
    random_mask_rate: float = 0.1  # 1 − keep of Z (or the dropout rate) when a run gives none


METHODS: dict[str, MethodConfig] = {
    m.name: m
    for m in [
        MethodConfig("dense", sparse=False, regrowth="none"),
        MethodConfig("static", regrowth="none"),
        MethodConfig("set", regrowth="random"),
        MethodConfig("rigl"),
        # CigL's keep 0.99: the official code's value, chosen by the cpu-study on validation NLL
        # (docs/reproduction.md); the dropout baselines keep the conventional rate 0.1
        MethodConfig("cigl", random_mask=True, wma=True, output="wma", random_mask_rate=0.01),
        MethodConfig("cigl-no-rm", wma=True, output="wma"),
        MethodConfig("cigl-no-wma", random_mask=True, snapshots=True, output="predictive", random_mask_rate=0.01),
        MethodConfig("rigl-wdp", random_mask=True, rescale_random_mask=True),
        MethodConfig("rigl-mcdp", activation_dropout=True, output="mc-dropout"),
    ]
}

# Paper / official-code settings per architecture: weight decay, lr halving interval (steps),
# warm-up steps.  Step counts refer to the paper's run length (250 epochs of 45,000 images at
# batch 128 = 88,000 steps) and are rescaled to a run's own length unless given explicitly.
MODEL_DEFAULTS: dict[str, dict] = {
    "wrn-22-2": {"weight_decay": 5e-4, "lr_decay_every": 30_000, "warmup_steps": 0},
    "resnet50": {"weight_decay": 1e-4, "lr_decay_every": 20_000, "warmup_steps": 1_760},
    "resnet50-imagenet": {"weight_decay": 1e-4, "lr_decay_every": 20_000, "warmup_steps": 1_760},
}
# Defaults that change with the data set when not given explicitly (paper §5, ImageNet: ResNet-50,
# 100 epochs, batch 64).
DATASET_DEFAULTS: dict[str, dict] = {
    "imagenet": {"model": "resnet50-imagenet", "epochs": 100, "batch_size": 64},
}
GENERIC_DEFAULTS = {"weight_decay": 5e-4, "lr_decay_every": 30_000, "warmup_steps": 0}
PAPER_EPOCHS = 250
PAPER_TOTAL_STEPS = PAPER_EPOCHS * math.ceil(45_000 / 128)
ENGINES = ("plain", "svi")
LR_SCHEDULES = ("step", "cosine-window")
LIKELIHOODS = ("categorical", "gaussian")
DTYPES = {"float32": torch.float32, "float64": torch.float64}
MAX_SEED = 2**32 - 1  # numpy's legacy seeding and most tools take seeds in [0, 2**32)


def option(default, help: str, **meta):  # noqa: A002 (the argparse word)
    """A config field with its command-line help: ``experiments.cli`` builds every training
    option from these fields, so the CLI, the Python API and config.json share one source."""
    return dataclasses.field(default=default, metadata={"help": help, **meta})


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a run.

    ``model``, ``epochs`` and ``batch_size`` left as None take the data set's defaults on
    construction (``DATASET_DEFAULTS``: ImageNet trains ResNet-50 for 100 epochs at batch 64), so
    ``TrainConfig(dataset="imagenet")`` and ``--dataset imagenet`` agree.  The other ``None``
    fields depend on the model or the run length and are filled by :meth:`resolved`.
    Each field's ``help`` is its command-line help (``--field-name``)."""

    method: str = option("cigl", "training method", choices=tuple(METHODS))
    engine: str = option("plain", "plain: cross-entropy + L2; svi: −ELBO/N of the Pyro model and guide",
                         choices=ENGINES)
    model: str | None = option(None, "model name from the registry (default: wrn-22-2; imagenet: resnet50-imagenet)")
    dataset: str = option("cifar10", "cifar10, cifar100 or imagenet (an ImageFolder with train/ and val/)")
    data_dir: str | None = option(None, "data folder (default: $CIGL_DATA_DIR)")
    download: bool = option(False, "download the data set through torchvision if missing")
    sparsity: float = option(0.95, "global sparsity in [0, 1)")
    distribution: str = option("erk", "per-layer densities", choices=DISTRIBUTIONS)
    epochs: int | None = option(None, f"training epochs (default: {PAPER_EPOCHS}; imagenet: 100)")
    batch_size: int | None = option(None, "batch size (default: 128; imagenet: 64)")
    lr: float = option(0.1, "peak learning rate")
    momentum: float = option(0.9, "SGD momentum")
    nesterov: bool = option(True, "Nesterov momentum")
    weight_decay: float | None = option(None, "L2 weight decay (default: per model, as in the paper)")
    lr_decay_every: int | None = option(None, "steps between lr decays (default: the paper's, rescaled to the "
                                        "run length)")
    lr_decay_factor: float = option(0.5, "lr multiplier at each decay")
    lr_schedule: str = option("step", "step: ×decay-factor every --lr-decay-every steps (paper); cosine-window: cosine "
                              "down to the step schedule's lr at T*, then held through the WMA window",
                              choices=LR_SCHEDULES)
    warmup_steps: int | None = option(None, "linear lr warm-up steps (default: per model, rescaled)")
    val_fraction: float = option(0.1, "fraction of the training images held out for validation")
    subset: int | None = option(None, "train on this many images (validation scaled alike; quick runs)")
    test_subset: int | None = option(None, "evaluate on this many test images, drawn with a fixed seed")
    delta_t: int = option(100, "steps between mask updates ΔT")
    drop_fraction: float = option(0.3, "initial drop fraction of the mask update (cosine decay)")
    update_end: float = option(0.75, "fraction of training with mask updates")
    random_mask_rate: float | None = option(None, "1 − keep of the random mask Z, or the dropout rate of rigl-mcdp "
                                            "(default: per method — 0.01 for cigl and cigl-no-wma, the official "
                                            "code's value, chosen by the cpu-study on validation NLL; the paper's "
                                            "text gives 0.1 as an example; 0.1 for rigl-wdp and rigl-mcdp)")
    wma_start_epoch: int | None = option(None, "T*, the first epoch of weight & mask averaging (default: 0.8 × epochs)")
    mixup: float = option(0.0, "mixup α (0: off)")
    label_smoothing: float = option(0.0, "label smoothing ε")
    mc_samples: int = option(10, "forward passes of the sampling predictors (mc-dropout, mc-z, swag)")
    bn_batches: int | None = option(None, "training batches used to recompute BatchNorm statistics (default: all)")
    val_curves: bool = option(True, "validation accuracy, NLL and ECE after every epoch in history (last weights; "
                              "WMA from T*)", flag="--no-val-curves")
    curve_bn_batches: int = option(10, "clean training batches the per-epoch WMA curve recomputes BatchNorm on")
    temperature_scaling: bool = option(True, "fit a temperature on the validation split")
    sigma: float = option(0.0, "guide scale σ of the SVI engine (0: the Delta limit)")
    likelihood: str = option("categorical", "categorical, or gaussian: y ~ N(f(x), 1/τ) (paper Eq. 2)",
                             choices=LIKELIHOODS, cli=False)
    noise_precision: float = option(1.0, "τ of the Gaussian likelihood", cli=False)
    save_samples: bool = option(True, "keep the WMA samples on disk (needed by posterior_report)", flag="--no-samples")
    seed: int = option(0, "random seed")
    device: str = option("auto", "auto, cpu, cuda or cuda:N")
    dtype: str = option("float32", "parameter and input precision (float64 for numerical checks)",
                        choices=tuple(DTYPES))
    amp: str = option("auto", "bf16 autocast of the forward pass (auto: on for CUDA and CPUs with AMX-/AVX512-BF16)",
                      choices=("auto", "bf16", "off"))
    channels_last: str = option("auto", "channels-last memory format (auto: on for float32)",
                                choices=("auto", "on", "off"))
    compile: bool = option(False, "torch.compile the network's functional forward")
    augment: bool = option(True, "random crop and flip of training images")
    log_every: int = option(50, "steps between progress-bar updates of the loss")

    def __post_init__(self):
        defaults = {"model": "wrn-22-2", "epochs": PAPER_EPOCHS, "batch_size": 128,
                    **DATASET_DEFAULTS.get(self.dataset, {})}
        for name, value in defaults.items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, value)

    # -- derived ---------------------------------------------------------------
    @property
    def method_config(self) -> MethodConfig:
        return METHODS[self.method]

    @property
    def mask_rate(self) -> float:
        """``random_mask_rate``, or the method's default (:class:`MethodConfig`) when it is unset."""
        return self.method_config.random_mask_rate if self.random_mask_rate is None else self.random_mask_rate

    @property
    def keep(self) -> float:
        """Keep probability of Z (1 when the method has no random mask)."""
        return 1.0 - self.mask_rate if self.method_config.random_mask else 1.0

    @property
    def final_bn_recomputed(self) -> bool:
        """Whether the ``final`` predictor gets BatchNorm statistics of its own.

        CigL trains under M⊙Z⊙W with an *unscaled* Z ~ Bernoulli(keep), so the running statistics
        tracked in training belong to pre-activations about keep × those of M⊙W; evaluating M⊙W
        with them is off by 1/keep (ECE 0.31 for keep 0.9 on WRN-22-2 in the study's pilot).  For
        such methods ``final`` is M⊙W with BatchNorm recomputed on the training images, as for
        every averaged weight setting.  Methods without Z keep the training statistics, which
        belong to the weights they evaluate; so does weight dropout (Z/keep), whose rescaling keeps
        the pre-activations' mean, as inverted dropout does (its noise still widens their variance
        in training, the usual dropout approximation)."""
        m = self.method_config
        return m.random_mask and not m.rescale_random_mask and self.keep < 1.0

    @property
    def dropout(self) -> float:
        """Activation-dropout rate (MC-dropout baseline uses the random-mask rate)."""
        return self.mask_rate if self.method_config.activation_dropout else 0.0

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    def speed_options(self, device: torch.device) -> dict:
        """Keyword arguments of :meth:`SparseNetwork.configure` for ``device``.

        "auto" turns bf16 autocast on where it is faster: on CUDA, and on CPUs with bf16 matrix
        instructions (AMX-BF16 or AVX512-BF16, see :func:`cigl_bayes.device.fast_path_available`;
        elsewhere bf16 is emulated, 10–17× slower).  Channels-last is on for every float32 run: it
        was faster on CUDA and on both CPUs measured, with or without bf16 (docs/performance.md).
        float64 runs (numerical checks) use neither."""
        fp32 = self.dtype == "float32"
        amp = self.amp == "bf16" or (self.amp == "auto" and fp32 and fast_path_available(device))
        return {"autocast_dtype": torch.bfloat16 if amp else None,
                "channels_last": self.channels_last == "on" or (self.channels_last == "auto" and fp32),
                "compile": self.compile}

    def compute_dtype(self, device: torch.device) -> str:
        """The dtype the matrix products of a run on ``device`` would run in ("bfloat16" where
        :meth:`speed_options` turns autocast on, else the parameters' dtype), as recorded per epoch
        in ``history`` → ``compute_dtype``."""
        return "bfloat16" if self.speed_options(device)["autocast_dtype"] is not None else self.dtype

    def steps_per_epoch(self, n_train: int) -> int:
        return math.ceil(n_train / self.batch_size)

    def resolved(self, n_train: int | None = None) -> TrainConfig:
        """Fill model-dependent defaults; rescale paper step counts to this run's length.

        The result holds numbers, not "the default": e.g. ``random_mask_rate`` becomes the method's
        rate.  So change the method (or model, epochs) on the unresolved config and resolve again;
        ``dataclasses.replace(cfg.resolved(), method="rigl-wdp")`` would keep CigL's rate 0.01."""
        self.validate()
        d = MODEL_DEFAULTS.get(self.model, GENERIC_DEFAULTS)
        scale = 1.0
        if n_train is not None:
            scale = self.epochs * self.steps_per_epoch(n_train) / PAPER_TOTAL_STEPS
        changes = {}
        if self.weight_decay is None:
            changes["weight_decay"] = d["weight_decay"]
        if self.lr_decay_every is None:
            changes["lr_decay_every"] = max(1, round(d["lr_decay_every"] * scale))
        if self.warmup_steps is None:
            changes["warmup_steps"] = round(d["warmup_steps"] * scale)
        if self.wma_start_epoch is None:
            changes["wma_start_epoch"] = int(0.8 * self.epochs)
        if self.random_mask_rate is None:  # recorded in config.json, so a later default cannot change a run
            changes["random_mask_rate"] = self.mask_rate
        out = dataclasses.replace(self, **changes)
        out.validate()
        return out

    def validate(self) -> None:
        """Raise ValueError naming the first bad field."""
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; known: {', '.join(METHODS)}")
        if self.engine not in ENGINES:
            raise ValueError(f"unknown engine {self.engine!r}; known: {', '.join(ENGINES)}")
        check_sparsity(self.sparsity)
        if self.distribution not in DISTRIBUTIONS:
            raise ValueError(f"unknown sparsity distribution {self.distribution!r}; known: {', '.join(DISTRIBUTIONS)}")
        if not 0.0 <= self.mask_rate < 1.0:  # NaN fails this too
            raise ValueError(f"random-mask rate must be in [0, 1), got {self.mask_rate}")
        check_keep(self.keep)
        m = self.method_config
        if (self.random_mask_rate is not None and not (m.random_mask or m.activation_dropout)
                and abs(self.random_mask_rate - m.random_mask_rate) > 1e-12):
            # resolved() records the method's own default rate for every method, so that value is accepted
            users = ", ".join(n for n, c in METHODS.items() if c.random_mask or c.activation_dropout)
            raise ValueError(f"--random-mask-rate {self.random_mask_rate} has no effect on method {self.method}, "
                             "which draws no random mask Z and has no activation dropout; leave it unset "
                             f"(it applies to {users})")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed <= MAX_SEED:
            raise ValueError(f"--seed must be an integer in [0, {MAX_SEED}] (2**32 - 1), got {self.seed!r}")
        positive = {"epochs": self.epochs, "batch_size": self.batch_size, "delta_t": self.delta_t,
                    "mc_samples": self.mc_samples, "log_every": self.log_every,
                    "curve_bn_batches": self.curve_bn_batches}
        for name, value in positive.items():
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        finite = {"lr": self.lr, "momentum": self.momentum, "lr_decay_factor": self.lr_decay_factor,
                  "mixup": self.mixup, "label_smoothing": self.label_smoothing, "sigma": self.sigma,
                  "noise_precision": self.noise_precision, "drop_fraction": self.drop_fraction}
        if self.weight_decay is not None:
            finite["weight_decay"] = self.weight_decay
        for name, value in finite.items():
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
        if self.lr <= 0:
            raise ValueError(f"learning rate must be > 0, got {self.lr}")
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")
        if self.nesterov and self.momentum == 0:
            raise ValueError("Nesterov momentum needs momentum > 0 (give --momentum or turn Nesterov off)")
        if not 0.0 < self.lr_decay_factor <= 1.0:
            raise ValueError(f"lr decay factor must be in (0, 1], got {self.lr_decay_factor}")
        if self.weight_decay is not None and self.weight_decay < 0:
            raise ValueError(f"weight decay must be ≥ 0, got {self.weight_decay}")
        for name in ("lr_decay_every", "bn_batches"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive integer (or unset), got {value!r}")
        if self.warmup_steps is not None and (not isinstance(self.warmup_steps, int) or self.warmup_steps < 0):
            raise ValueError(f"warmup_steps must be a non-negative integer, got {self.warmup_steps!r}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"validation fraction must be in [0, 1), got {self.val_fraction}")
        for name in ("subset", "test_subset"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value <= 0):
                raise ValueError(f"{name} must be a positive number of images, got {value!r}")
        if self.wma_start_epoch is not None and not 0 <= self.wma_start_epoch < self.epochs:
            raise ValueError(
                f"WMA start epoch T* = {self.wma_start_epoch} is beyond the last epoch "
                f"(must be in [0, {self.epochs - 1}] for {self.epochs} epochs)")
        if self.mixup < 0 or not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError("mixup α must be ≥ 0 and label smoothing ε in [0, 1)")
        if self.sigma < 0:
            raise ValueError(f"guide scale sigma must be ≥ 0, got {self.sigma}")
        if self.likelihood not in LIKELIHOODS:
            raise ValueError(f"unknown likelihood {self.likelihood!r}; known: {', '.join(LIKELIHOODS)}")
        if self.noise_precision <= 0:
            raise ValueError(f"noise precision τ must be > 0, got {self.noise_precision}")
        if self.likelihood == "gaussian" and (self.mixup or self.label_smoothing):
            raise ValueError("mixup and label smoothing apply to classification, not the Gaussian likelihood")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"unknown lr schedule {self.lr_schedule!r}; known: {', '.join(LR_SCHEDULES)}")
        if self.amp not in ("auto", "bf16", "off"):
            raise ValueError(f"amp must be auto, bf16 or off, got {self.amp!r}")
        if self.channels_last not in ("auto", "on", "off"):
            raise ValueError(f"channels_last must be auto, on or off, got {self.channels_last!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"unknown dtype {self.dtype!r}; known: {', '.join(DTYPES)}")
        if self.engine == "svi" and self.method_config.activation_dropout:
            raise ValueError("the SVI engine has no activation-dropout likelihood; use --engine plain for rigl-mcdp")
        MaskSchedule(1, self.delta_t, self.drop_fraction, self.update_end)  # checks its own fields

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown config fields: {sorted(unknown)}")
        return cls(**d)


# Fields that may differ between an interrupted run and its resumption.
RESUME_FREE_FIELDS = ("data_dir", "device", "download", "log_every", "amp", "channels_last", "compile")
