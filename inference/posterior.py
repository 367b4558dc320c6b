"""The posterior tools for a :class:`cigl_bayes.CigL` object in memory, without a run folder.

    from cigl_bayes.inference import posterior
    post = posterior(cigl, bn_loader)                  # after training your own model with CigL
    post.predict(x, "predictive").probs                 # final, wma, predictive, mc-z, swag
    post.swag(rank=2); post.to_inferencedata()

The object is a :class:`cigl_bayes.inference.run.TrainedRun` — the class ``load_run`` returns for a run
folder — built from the object's final weights, WMA mean and collected samples instead of from
files, so every predictor, SWAG and the arviz export have one implementation and the same meaning
for both.  Differences: inputs are given as your model takes them (already normalised tensors;
nothing is rescaled), and BatchNorm statistics are recomputed on ``bn_loader`` (an iterable of
``(x, y)`` batches of training data) for every weight setting but ``final`` (and for CigL's
``final`` too, as in a run).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from cigl_bayes.cigl import CigL
from cigl_bayes.config import TrainConfig
from cigl_bayes.masks import DeterministicMask
from cigl_bayes.network import SparseNetwork
from cigl_bayes.predict import RECOMPUTED_AUGMENTED, RECOMPUTED_CLEAN, has_batchnorm
from cigl_bayes.settings import CigLSettings

from .prediction import one_row_per_input
from .run import TrainedRun


@dataclasses.dataclass
class ObjectPosterior(TrainedRun):
    """A :class:`TrainedRun` over a CigL object's weights (see :func:`posterior`)."""

    loader: object = dataclasses.field(default=None, repr=False)  # the batches BatchNorm is recomputed on
    settings: CigLSettings | None = None  # what the CigL object was built with: the record of its training

    def __repr__(self) -> str:
        return (f"ObjectPosterior(method={self.config.method!r}, sparsity={self.config.sparsity:g}, "
                f"wma={'yes' if self.wma is not None else 'no'}, samples={len(self.samples)}, "
                f"device={str(self.device)!r})")

    def prepare(self, images) -> torch.Tensor:
        """Inputs as the model takes them: a float tensor, moved to the network's device and dtype."""
        if not torch.is_tensor(images) and not hasattr(images, "__array__"):
            raise ValueError(f"predict takes a batch of inputs (a tensor) or a torch DataLoader, got a "
                             f"{type(images).__name__}")
        x = torch.as_tensor(images)
        if not x.is_floating_point():
            raise ValueError(f"inputs must be float tensors as your model takes them, got {x.dtype}")
        return x.to(self.device, self.net.sparse_params[0].dtype)

    def _logits(self, batch: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        """Your model's logits; an error of its forward on this batch comes back as one line naming the
        batch's shape (a single image (C, H, W) instead of a batch is the usual cause)."""
        try:
            logits = self.net.forward(batch, sparse)
        except torch.OutOfMemoryError:
            raise  # not the batch's shape: a caller may retry with a smaller batch
        except Exception as error:
            first = (str(error).strip().splitlines() or [type(error).__name__])[0]
            raise ValueError(f"your model failed on a batch of shape {tuple(batch.shape)} ({first}); predict "
                             "takes a batch of inputs as your model takes them (one image: "
                             "images.unsqueeze(0))") from error
        return one_row_per_input(logits, batch)

    def _check_protocol(self, protocol: str) -> None:
        if protocol == RECOMPUTED_AUGMENTED:
            raise ValueError("a posterior of a CigL object recomputes BatchNorm statistics on the bn_loader you "
                             f"gave it, whatever it serves; for {protocol} build posterior(cigl, loader) on those "
                             "batches and leave bn_protocol out")

    def bn_loader(self, protocol: str = RECOMPUTED_CLEAN):
        if self.loader is None:
            if not has_batchnorm(self.net.module):
                return ()  # nothing to recompute
            raise ValueError("this predictor recomputes BatchNorm statistics: give posterior(cigl, bn_loader)")
        return self.loader

    def data(self):
        raise ValueError("a posterior built from a CigL object has no run data: give inputs to predict()")

    def _temperature_scaled(self, images, draws, seed, batch_size):
        raise ValueError("a posterior built from a CigL object has fitted no temperature: fit one on validation "
                         "logits with cigl_bayes.metrics.fit_temperature(logits, labels) and scale with "
                         "apply_temperature(logits, T)")

    @property
    def metrics(self):
        return None

    @property
    def where(self) -> str:
        return "this CigL object"

    @property
    def mean_only_option(self) -> str:
        return "keep_samples=False"


def posterior(cigl: CigL, bn_loader=None, *, mc_samples: int = 10, bn_batches: int | None = None) -> ObjectPosterior:
    """Every predictor of a trained :class:`CigL` object (final, wma, predictive, mc-z, swag), SWAG
    and the arviz export, over a copy of its network (training may go on afterwards)."""
    device = cigl.net.sparse_params[0].device
    dtype = cigl.net.sparse_params[0].dtype
    module = cigl.plain_copy().eval()
    mask = DeterministicMask(cigl.net.mask.shapes, cigl.net.mask.flat.clone(), dtype)
    net = SparseNetwork(module, cigl.net.sparse_names, mask)
    net.autocast_dtype = cigl.net.autocast_dtype
    settings = cigl.settings
    t_star = cigl.collect_from_epoch or 0  # None: no epoch has ended, so no sample either
    config = TrainConfig(method=cigl.method.name, model="custom", sparsity=cigl.sparsity,
                         random_mask_rate=round(1.0 - cigl.keep, 12) if cigl.method.random_mask else None,
                         distribution=settings.distribution, delta_t=settings.delta_t,
                         drop_fraction=settings.drop_fraction, update_end=settings.update_end, seed=cigl.seed,
                         mc_samples=mc_samples, bn_batches=bn_batches, device=str(device),
                         dtype=str(dtype).removeprefix("torch."), epochs=max(1, cigl.epoch),
                         wma_start_epoch=min(t_star, max(0, cigl.epoch - 1)),
                         **_optimizer_settings(cigl.optimizer))
    samples = [dataclasses.replace(s) for s in cigl.samples]
    wma = cigl.wma.mean() if cigl.wma.count else None
    post = ObjectPosterior(Path("<CigL object>"), config, net, wma, samples,
                           [t_star + i for i in range(len(samples))], [], device,
                           bn_batches=bn_batches, loader=bn_loader, settings=settings)
    post._final_state = {k: v.clone() for k, v in module.state_dict().items()}
    return post


def _optimizer_settings(optimizer: torch.optim.Optimizer) -> dict:
    """The TrainConfig fields an optimizer's first parameter group states (lr, momentum, Nesterov,
    weight decay; an optimizer without momentum, Adam say, records 0).  What a CigL object cannot
    know (data set, batch size, augmentation) keeps TrainConfig's defaults in ``config`` and is no
    record of your training: :attr:`ObjectPosterior.settings` is the record of CigL's own options."""
    group = optimizer.param_groups[0]

    def number(key: str, default: float) -> float:
        value = group.get(key, default)
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else default

    momentum = number("momentum", 0.0)
    return {"lr": number("lr", 0.0), "momentum": momentum, "weight_decay": number("weight_decay", 0.0),
            "nesterov": bool(group.get("nesterov", False)) and momentum > 0}
