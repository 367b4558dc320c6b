"""What a predictor returns, and the checks and shapes every predictor shares.

``Prediction`` holds class probabilities p(y | x) = E_w softmax(f_w(x)) and, for the predictors that
average over weight draws, the draws themselves, from which the uncertainty splits into its parts
(Depeweg et al. 2018): total H[E_w p] = aleatoric E_w H[p] + epistemic I(y; w | x).

``loader_batches`` reads a ``torch.utils.data.DataLoader`` as ``predict`` takes it: each batch's
inputs, and its labels where the batches are ``(inputs, labels)`` pairs, so that predictions over a
shuffled loader still come with the labels in their own order.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import torch


@dataclasses.dataclass
class Prediction:
    """Class probabilities of one predictor: ``probs`` (N, C) is the mean over ``draws`` (K, N, C)
    when the predictor has draws (predictive, mc-z, swag), else ``draws`` is None.  ``labels`` (N,):
    the classes a DataLoader's ``(inputs, labels)`` batches carried, in the order of ``probs``
    (None for a tensor of inputs, or a loader whose batches carry no integer labels)."""

    predictor: str
    probs: torch.Tensor
    draws: torch.Tensor | None = None
    labels: torch.Tensor | None = None

    def entropy(self) -> torch.Tensor:
        """Predictive entropy H[E_w p(y|x,w)] per input (nats): total uncertainty."""
        return _entropy(self.probs)

    def mutual_information(self) -> torch.Tensor:
        """I(y; w | x) = H[E_w p] − E_w H[p] per input (nats): the part of the uncertainty that is
        about the weights (0 for single-weight predictors)."""
        if self.draws is None:
            return torch.zeros(self.probs.shape[0], dtype=self.probs.dtype)
        return (self.entropy() - _entropy(self.draws).mean(0)).clamp_min(0.0)


def is_loader(inputs) -> bool:
    """Whether ``predict`` reads ``inputs`` batch by batch (a DataLoader) rather than as one batch."""
    return isinstance(inputs, torch.utils.data.DataLoader)


def loader_batches(loader: torch.utils.data.DataLoader) -> Iterator[tuple[object, torch.Tensor | None]]:
    """(inputs, labels) of each batch of ``loader``: a batch that is a tensor gives no labels; a
    ``(inputs, labels, ...)`` tuple or list gives its second item when that is one integer class per
    input, shape (B,) (anything else, e.g. soft labels, (B, 1) or masks, counts as no labels); labels
    of another length than the batch's inputs, and a dict, are refused, naming them."""
    for number, batch in enumerate(loader):
        if isinstance(batch, dict):
            raise ValueError(f"batch {number} of the DataLoader is a dict (keys {', '.join(map(str, batch))}); "
                             "predict reads batches that are inputs or (inputs, labels) pairs")
        if not isinstance(batch, (tuple, list)):
            yield batch, None
            continue
        if not batch:
            raise ValueError(f"batch {number} of the DataLoader is empty; predict reads batches that are inputs "
                             "or (inputs, labels) pairs")
        inputs, labels = batch[0], batch[1] if len(batch) > 1 else None
        if labels is not None:
            try:  # a tensor, an array, or a list of ints from a custom collate_fn
                labels = torch.as_tensor(labels)
            except (TypeError, ValueError, RuntimeError):
                labels = None
        if labels is not None and (labels.dim() != 1 or labels.is_floating_point() or labels.is_complex()
                                   or labels.dtype == torch.bool):
            labels = None
        if labels is not None and len(labels) != len(inputs):
            raise ValueError(f"batch {number} of the DataLoader holds {len(inputs)} inputs but {len(labels)} labels")
        yield inputs, labels


def joined_labels(per_batch: list[torch.Tensor | None]) -> torch.Tensor | None:
    """The labels of every batch, in order, when every batch carried them; else None."""
    if not per_batch or any(y is None for y in per_batch):
        return None
    return torch.cat([y.cpu().long() for y in per_batch])


def one_row_per_input(logits: torch.Tensor, batch: torch.Tensor) -> torch.Tensor:
    """``logits`` when they are (B, classes) for a batch of B inputs; else a one-line error."""
    if not torch.is_tensor(logits):
        raise ValueError(f"the network returned a {type(logits).__name__}, not a tensor of logits (batch, classes); "
                         "give predict a module whose forward returns the logits alone")
    if logits.dim() != 2 or len(logits) != len(batch):
        raise ValueError(f"the network returned outputs of shape {tuple(logits.shape)} for a batch of shape "
                         f"{tuple(batch.shape)}; predict needs logits (batch, classes): give a batch of "
                         "inputs (one image: images.unsqueeze(0))")
    if logits.shape[1] < 2:
        raise ValueError(f"the network returned {logits.shape[1]} output column(s); predict gives class "
                         "probabilities (a softmax over at least 2 classes' logits): for a regression model use "
                         "the Pyro engine's Gaussian likelihood (cigl_bayes.inference.LIKELIHOODS)")
    return logits


def at_least_float32(logits: torch.Tensor) -> torch.Tensor:
    """Logits for the softmax: bf16/fp16 widened to float32, a float64 model's kept float64."""
    return logits if logits.dtype == torch.float64 else logits.float()


def _entropy(p: torch.Tensor) -> torch.Tensor:
    return -(p * p.clamp_min(1e-12).log()).sum(-1)
