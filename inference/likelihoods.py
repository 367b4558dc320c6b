"""Likelihoods p(y | f(x; W)) over a mini-batch plate (paper Eq. 2 and its classification form).

Each is called inside ``pyro.plate("data", N, subsample=…)`` so Pyro scales the batch log-
likelihood by N/B.  The plate is the first dimension.  Classification takes
outputs (B, C) and one label per data point; a regression target's dimensions after the first are
event dimensions (summed in its log-likelihood), so targets of shape (B,) and (B, 1) give the same
−ELBO.  A target of another shape, which would broadcast against the plate, is refused.
  categorical   y ~ Categorical(softmax(f))                     hard labels (B,); float targets: soft
  soft          log p = Σ_c ỹ_c log softmax(f)_c                 soft labels (B, C) (mixup, smoothing)
  gaussian      y ~ N(f, 1/τ)                                    regression, precision τ
With ``target=None`` the categorical and Gaussian likelihoods *sample* y (``pyro.infer.Predictive``);
soft labels cannot be sampled.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch

from cigl_bayes.objectives import gaussian_mean


def _shapes_differ(kind: str, target: torch.Tensor, expected: tuple | str, output: torch.Tensor) -> ValueError:
    return ValueError(f"{kind} likelihood: targets of shape {tuple(target.shape)} for outputs of shape "
                      f"{tuple(output.shape)}; expected targets of shape {expected}")


def categorical(output: torch.Tensor, target: torch.Tensor | None, **_) -> None:
    if output.dim() != 2:
        raise ValueError(f"categorical likelihood: outputs of shape {tuple(output.shape)}; expected (B, C), "
                         "one class distribution per data point")
    if target is not None and target.dtype.is_floating_point:
        if target.dim() == 1:
            raise ValueError(f"categorical likelihood: float targets of shape {tuple(target.shape)}; class indices "
                             "must be integers (soft labels are (B, C))")
        soft(output, target)  # soft labels (mixup / label smoothing)
        return
    if target is not None and target.shape != output.shape[:-1]:  # (B, 1) would broadcast to (B, B)
        raise _shapes_differ("categorical", target, tuple(output.shape[:-1]), output)
    pyro.sample("y", dist.Categorical(logits=output), obs=target)


def soft(output: torch.Tensor, target: torch.Tensor | None, **_) -> None:
    """Soft-label cross-entropy as a log-likelihood factor (a tempered categorical)."""
    if target is None:
        raise ValueError("soft likelihood: soft labels cannot be sampled (target=None); predict with "
                         "likelihood='categorical'")
    if output.dim() != 2 or target.shape != output.shape:
        raise _shapes_differ("soft", target, "(B, C) with outputs (B, C)", output)
    pyro.factor("y", (target * torch.log_softmax(output, dim=-1)).sum(-1))


def gaussian(output: torch.Tensor, target: torch.Tensor | None, *, precision: float = 1.0, **_) -> None:
    """y ~ N(f(x), τ⁻¹) (paper Eq. 2), each data point's dimensions after the first one event."""
    if precision <= 0:
        raise ValueError(f"Gaussian likelihood precision τ must be > 0, got {precision}")
    mean = gaussian_mean(output, target)
    pyro.sample("y", dist.Normal(mean, precision ** -0.5).to_event(mean.dim() - 1), obs=target)


LIKELIHOODS = {"categorical": categorical, "soft": soft, "gaussian": gaussian}
