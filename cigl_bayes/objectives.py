"""The plain objective and the batch targets shared by both engines.

Plain objective (paper Eq. 1, CigL's training loss): for one mini-batch,
    L(W, θ) = CE(f(x; M⊙Z⊙W, θ), y) + λ (‖M⊙Z⊙W‖² + ‖θ‖²),   λ = wd / 2,
(with τ/2 · mean squared error in place of CE for the Gaussian likelihood, paper Eq. 2),
so its gradient w.r.t. W is M⊙Z⊙(∇CE + wd·M⊙Z⊙W): Algorithm 1's masked update, with the weight
decay written into the loss (the optimiser itself has weight_decay = 0).  The Pyro engine
(``cigl_bayes.inference.objective.ElboObjective``) returns −ELBO/N of the hierarchical model instead;
with σ = 0 the two agree up to a constant (tests/test_elbo_equivalence.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .network import SparseNetwork


def batch_targets(
    x: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    *,
    mixup: float = 0.0,
    label_smoothing: float = 0.0,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and targets for one step: hard labels, or soft labels under mixup / smoothing.

    mixup (Zhang et al. 2018): λ ~ Beta(α, α), x̃ = λx + (1−λ)x_π, ỹ = λ y + (1−λ) y_π.
    label smoothing: ỹ = (1−ε)·onehot(y) + ε / C.
    """
    if mixup <= 0 and label_smoothing <= 0:
        return x, y
    target = F.one_hot(y, num_classes).to(x.dtype)
    if label_smoothing > 0:
        target = target * (1 - label_smoothing) + label_smoothing / num_classes
    if mixup > 0:
        # λ = G₁/(G₁+G₂) with Gᵢ ~ Gamma(α) is Beta(α, α) drawn from the seeded ``generator``.
        gammas = torch._standard_gamma(torch.full((2,), float(mixup)), generator=generator)
        lam = float(gammas[0] / gammas.sum())
        # The pairing permutation comes from a generator seeded by one draw, so ``generator``
        # advances by the same amount whatever the batch size: under torch.distributed every
        # rank (even with a smaller last shard) keeps drawing the same λ and SET scores.
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed)).to(x.device)
        x = lam * x + (1 - lam) * x[perm]
        target = lam * target + (1 - lam) * target[perm]
    return x, target


def gaussian_mean(output: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
    """f(x) shaped like the regression targets: a (B, 1) head for (B,) targets loses its last
    dimension; any other mismatch (which would broadcast, e.g. to (B, B)) is refused."""
    if target is None:
        return output.squeeze(-1) if output.dim() == 2 and output.shape[-1] == 1 else output
    mean = output.squeeze(-1) if output.dim() == target.dim() + 1 and output.shape[-1] == 1 else output
    if mean.shape != target.shape:
        raise ValueError(f"gaussian likelihood: targets of shape {tuple(target.shape)} for outputs of shape "
                         f"{tuple(output.shape)}; expected targets of shape {tuple(mean.shape)}")
    return mean


def data_loss(output: torch.Tensor, target: torch.Tensor, likelihood: str = "categorical",
              precision: float = 1.0) -> torch.Tensor:
    """Mean negative log-likelihood per data point, up to a constant.

    categorical: cross-entropy (hard or soft targets); soft: −Σ_c ỹ_c log softmax(f)_c;
    gaussian: τ/2 · ‖f(x) − y‖² per data point (paper Eq. 2; the sum over a data point's
    dimensions, as ``inference.likelihoods.gaussian`` counts them, so (B,) and (B, 1) agree).
    """
    if likelihood == "categorical":
        return F.cross_entropy(output, target)
    if likelihood == "soft":
        return -(target * torch.log_softmax(output, dim=-1)).sum(-1).mean()
    if likelihood == "gaussian":
        mean = gaussian_mean(output, target)
        return 0.5 * precision * (mean - target).square().reshape(len(target), -1).sum(1).mean()
    raise ValueError(f"unknown likelihood {likelihood!r}; known: categorical, soft, gaussian")


class PlainObjective:
    """Data loss of the masked network plus λ‖M⊙Z⊙W‖² + λ‖θ‖² with λ = wd/2."""

    def __init__(self, net: SparseNetwork, weight_decay: float, likelihood: str = "categorical",
                 precision: float = 1.0):
        self.net = net
        self.weight_decay = weight_decay
        self.likelihood, self.precision = likelihood, precision
        self._scored: torch.Tensor | None = None  # W of the last call made with track_score
        self.last_data_loss: torch.Tensor | None = None

    def __call__(self, x: torch.Tensor, target: torch.Tensor, z: torch.Tensor | None, *, track_score: bool = False):
        """Return (loss, W) where W = M⊙Z⊙W is the flat effective weight the network used.

        With ``track_score`` the dense gradient ∂loss/∂W is kept for :meth:`regrowth_score`."""
        w = self.net.effective_flat(z)
        self._scored = None
        if track_score:
            w.retain_grad()
            self._scored = w
        logits = self.net.forward(x, w)
        loss = data_loss(logits, target, self.likelihood, self.precision)
        self.last_data_loss = loss.detach()  # the data term, without the L2 penalty
        if self.weight_decay:
            l2 = w.square().sum()
            if self.net.other_params:
                l2 = l2 + torch.stack(torch._foreach_norm(self.net.other_params)).square().sum()
            loss = loss + 0.5 * self.weight_decay * l2
        return loss, w

    def regrowth_score(self) -> torch.Tensor:
        """After ``loss.backward()``: the dense gradient ∂L/∂(M⊙Z⊙W) of the Z-masked loss (RigL's
        regrowth score), every position included, not only the active ones."""
        if self._scored is None or self._scored.grad is None:
            raise RuntimeError("call the objective with track_score=True and back-propagate first")
        return self._scored.grad
