"""CigL's training behaviour, pinned one behaviour at a time (paper Algorithm 1 and Eq. 3).

Every expectation here is derived inside the test — an independent ERK solver, a hand-written
RigL update from an independently computed dense gradient, the WMA mean of recorded samples, a
hand-written SGD step, closed-form Gaussian log-densities — never by calling the function under
test.  ``python -m tests.mutation`` breaks each behaviour on purpose and checks that these tests
fail (docs/testing.md).

The trainers run in float64 on random 8×8 images (no data set needed), a few steps each.
"""

from __future__ import annotations

import copy
import math

import pyro
import pyro.poutine as poutine
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from cigl_bayes.config import TrainConfig
from cigl_bayes.data import TensorLoader
from cigl_bayes.evaluate import output_state_dict, predictor_log_probs
from cigl_bayes.inference import ElboObjective, HierarchicalGuide, SparseBayesianModel, prior_scale_from_weight_decay
from cigl_bayes.inference.training import Trainer
from cigl_bayes.masks import DeterministicMask
from cigl_bayes.models import build_model
from cigl_bayes.network import SparseNetwork
from cigl_bayes.objectives import PlainObjective
from cigl_bayes.random_mask import random_keep_mask
from cigl_bayes.sparsity import densities_for, layer_nnz, sparse_parameter_names
from cigl_bayes.train import Data

N_IMAGES, BATCH = 192, 32  # 6 steps per epoch


# -- helpers ---------------------------------------------------------------------------------
def synthetic_data(seed: int = 0) -> Data:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N_IMAGES, 3, 8, 8, generator=g, dtype=torch.float64)
    y = torch.randint(0, 10, (N_IMAGES,), generator=g)
    return Data(train=TensorLoader(x, y, batch_size=BATCH, shuffle=True, seed=seed),
                train_eval=TensorLoader(x, y, batch_size=64, shuffle=False),
                val=None, test=TensorLoader(x[:64], y[:64], batch_size=64, shuffle=False), num_classes=10)


def make_trainer(tmp_path, **overrides) -> Trainer:
    fields = {"method": "cigl", "model": "small-cnn", "sparsity": 0.8, "epochs": 3, "batch_size": BATCH,
              "delta_t": 4, "device": "cpu", "dtype": "float64", "log_every": 1000, "temperature_scaling": False}
    fields.update(overrides)
    return Trainer(TrainConfig(**fields), tmp_path, progress=False, data=synthetic_data())


class ZSpy:
    """Records every Z the trainer draws from its random-mask source."""

    def __init__(self, trainer: Trainer):
        self.draws: list[torch.Tensor | None] = []
        original = trainer.z_source.sample

        def sample(*args, **kwargs):
            z = original(*args, **kwargs)
            self.draws.append(None if z is None else z.clone())
            return z

        trainer.z_source.sample = sample


class ForwardSpy:
    """Records the flat sparse weights every training forward pass is given."""

    def __init__(self, trainer: Trainer):
        self.weights: list[torch.Tensor] = []
        original = trainer.net.forward

        def forward(x, sparse_flat, other_flat=None):
            self.weights.append(sparse_flat.detach().clone())
            return original(x, sparse_flat, other_flat)

        trainer.net.forward = forward


def flat(tensors) -> torch.Tensor:
    return torch.cat([t.detach().reshape(-1) for t in tensors])


def momentum(trainer: Trainer) -> torch.Tensor:
    return flat(trainer.optimizer.state[p]["momentum_buffer"] for p in trainer.net.sparse_params)


def independent_loss(module: nn.Module, net: SparseNetwork, w_eff: torch.Tensor, x, y, wd: float):
    """CE + (wd/2)(‖w_eff‖² + ‖θ‖²) of a copy of the module, written out by hand (paper Eq. 1)."""
    params = dict(module.named_parameters())
    shapes = [params[n].shape for n in net.sparse_names]
    weights = {n: v.view(s) for n, v, s in zip(net.sparse_names, w_eff.split([math.prod(s) for s in shapes]), shapes)}
    theta = {n: params[n] for n in net.other_names}
    logits = functional_call(module, {**weights, **theta}, (x,))
    l2 = w_eff.square().sum() + sum(t.square().sum() for t in theta.values())
    return F.cross_entropy(logits, y) + 0.5 * wd * l2, theta


def take_steps(trainer: Trainer, batches, n: int) -> None:
    for _ in range(n):
        trainer.train_step(*next(batches))


# -- ERK ------------------------------------------------------------------------------------
def erk_by_bisection(shapes, sparsity: float) -> list[float]:
    """ERK (RigL §3): d_l = min(1, ε·Σ dims / Π dims), ε found by bisection on the global budget."""
    numels = [math.prod(s) for s in shapes]
    scores = [sum(s) / math.prod(s) for s in shapes]
    target = (1 - sparsity) * sum(numels)
    lo, hi = 0.0, 1.0 / min(scores)
    for _ in range(200):
        eps = 0.5 * (lo + hi)
        kept = sum(min(1.0, eps * r) * n for r, n in zip(scores, numels))
        lo, hi = (eps, hi) if kept < target else (lo, eps)
    return [min(1.0, 0.5 * (lo + hi) * r) for r in scores]


@pytest.mark.parametrize("model", ["wrn-22-2", "resnet50"])
@pytest.mark.parametrize("sparsity", [0.9, 0.95])
def test_erk_per_layer_densities_match_an_independent_solver(model, sparsity):
    module = build_model(model, num_classes=10)
    params = dict(module.named_parameters())
    shapes = [params[n].shape for n in sparse_parameter_names(module)]
    expected = erk_by_bisection(shapes, sparsity)
    got = densities_for(shapes, sparsity, "erk")
    assert got == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert any(d == 1.0 for d in expected) or model == "resnet50"  # WRN's first conv is made dense
    assert layer_nnz(shapes, got) == [min(math.prod(s), max(1, round(d * math.prod(s))))
                                      for s, d in zip(shapes, expected)]


# -- the random mask Z ----------------------------------------------------------------------
def test_z_is_drawn_fresh_every_step_and_enters_the_forward_pass(tmp_path):
    trainer = make_trainer(tmp_path, delta_t=1000, random_mask_rate=0.1)  # no mask update in these steps
    zs, fw = ZSpy(trainer), ForwardSpy(trainer)
    batches = trainer.data.train.epoch(0)
    raw = []
    for x, y in batches:
        raw.append(trainer.net.sparse_flat().detach().clone())
        trainer.train_step(x, y)
    m = trainer.net.mask.float
    assert len(zs.draws) == len(fw.weights) == trainer.steps_per_epoch
    for z, w_raw, w_fwd in zip(zs.draws, raw, fw.weights):
        assert z is not None and set(z.unique().tolist()) <= {0.0, 1.0}
        assert torch.equal(w_fwd, m * z * w_raw)  # the forward pass sees M⊙Z⊙W
        dropped = 1 - float(z[trainer.net.mask.flat].mean())
        assert dropped == pytest.approx(0.1, abs=0.03)  # keep = 0.9 as asked
    for a, b in zip(zs.draws, zs.draws[1:]):
        assert not torch.equal(a, b)  # a fresh Z on every step


def test_a_default_cigl_trainer_draws_z_at_keep_099_and_records_it(tmp_path):
    """End to end: a Trainer built without a rate draws Z at the library default (keep 0.99) and its
    resolved config (config.json) says so, so the run keeps its meaning under a later default."""
    trainer = make_trainer(tmp_path, delta_t=1000)
    assert trainer.z_source.keep == pytest.approx(0.99)
    zs = ZSpy(trainer)
    take_steps(trainer, trainer.data.train.epoch(0), 4)
    m = trainer.net.mask.flat
    dropped = 1 - float(torch.cat([z[m] for z in zs.draws]).mean())  # ≈ 4 × 4,800 sparse weights
    assert dropped == pytest.approx(0.01, abs=0.004)
    assert trainer.cfg.to_dict()["random_mask_rate"] == pytest.approx(0.01)  # what fit() writes to config.json


def test_only_the_m_and_z_entries_move_in_a_step(tmp_path):
    trainer = make_trainer(tmp_path, delta_t=1000)
    zs = ZSpy(trainer)
    batches = trainer.data.train.epoch(0)
    take_steps(trainer, batches, 2)  # momentum buffers exist from here on
    before, mom_before = trainer.net.sparse_flat().detach().clone(), momentum(trainer)
    take_steps(trainer, batches, 1)
    after, z, m = trainer.net.sparse_flat().detach(), zs.draws[-1].bool(), trainer.net.mask.flat
    assert torch.equal(after[m & ~z], before[m & ~z])  # Z = 0: not moved at all
    assert (after[m & z] != before[m & z]).float().mean() > 0.95  # M⊙Z entries do move
    assert (after[~m] == 0).all()
    mu = trainer.cfg.momentum
    torch.testing.assert_close(momentum(trainer)[m & ~z], mu * mom_before[m & ~z], rtol=1e-12, atol=0)


# -- WMA ------------------------------------------------------------------------------------
def test_wma_is_the_mean_of_m_z_w_paired_with_each_epochs_last_z(tmp_path):
    trainer = make_trainer(tmp_path, epochs=4, wma_start_epoch=1)
    zs = ZSpy(trainer)
    expected_sparse, expected_other = [], []
    original_collect = trainer.cigl.collect

    def collect():
        last_z = zs.draws[-1]  # the Z of the epoch's last step, before collect may draw anything
        expected_sparse.append(trainer.net.mask.float * last_z * trainer.net.sparse_flat().detach())
        expected_other.append(trainer.net.other_flat().detach().clone())
        original_collect()

    trainer.cigl.collect = collect
    trainer.fit()
    assert trainer.wma.count == len(expected_sparse) == 3  # epochs 2, 3, 4 (T* = 1)
    mean = trainer.wma.mean()
    torch.testing.assert_close(mean.sparse, torch.stack(expected_sparse).mean(0), rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(mean.other, torch.stack(expected_other).mean(0), rtol=1e-12, atol=1e-15)
    for i, snap in enumerate(trainer.samples):
        torch.testing.assert_close(snap.sparse, expected_sparse[i], rtol=0, atol=0)


def test_batchnorm_is_recomputed_for_the_averaged_weights(tmp_path):
    trainer = make_trainer(tmp_path, epochs=2, wma_start_epoch=0)
    trainer.fit()
    state = output_state_dict(trainer)  # model.pt: the WMA weights with their own BN statistics
    module = copy.deepcopy(trainer.net.module)
    module.load_state_dict(state)
    x = trainer.data.train_eval.x
    first_conv = module.features[0](x)  # the conv before the first BatchNorm, WMA weights
    torch.testing.assert_close(state["features.1.running_mean"], first_conv.mean((0, 2, 3)), rtol=1e-10, atol=1e-12)
    batch_vars = torch.stack([b.var((0, 2, 3), unbiased=True) for b in first_conv.split(64)])
    torch.testing.assert_close(state["features.1.running_var"], batch_vars.mean(0), rtol=1e-10, atol=1e-12)
    # the wma predictor uses exactly these statistics
    module.eval()
    with torch.no_grad():
        expected = torch.log_softmax(module(trainer.data.test.x), -1)
    got = predictor_log_probs(trainer, {"test": trainer.data.test})["wma"]["test"]
    torch.testing.assert_close(got, expected.to(got.dtype), rtol=1e-5, atol=1e-6)


# -- RigL regrowth ----------------------------------------------------------------------------
def cosine_fraction(step: int, total: int, alpha: float = 0.3, end: float = 0.75) -> float:
    t_end = int(end * total)
    return alpha / 2 * (1 + math.cos(math.pi * min(step, t_end) / t_end))


def expected_rigl_mask(mask: DeterministicMask, w: torch.Tensor, score: torch.Tensor, fraction: float):
    """Per layer: drop the ⌊f·nnz⌋ smallest |w| active weights, regrow as many of the largest
    |score| among the inactive and the just dropped (RigL §3).  A layer ERK made dense is left
    alone."""
    new, grown = mask.flat.clone(), torch.zeros_like(mask.flat)
    offset = 0
    for numel, nnz in zip(mask.numels, mask.nnz):
        sl = slice(offset, offset + numel)
        offset += numel
        k = math.floor(fraction * nnz)
        if k == 0 or nnz == numel:
            continue
        active = torch.nonzero(mask.flat[sl]).flatten()
        dropped = active[w[sl][active].abs().argsort()[:k]]
        new[sl][dropped] = False
        candidates = torch.nonzero(~new[sl]).flatten()
        picked = candidates[score[sl][candidates].abs().argsort(descending=True)[:k]]
        new[sl][picked] = True
        grown[sl][picked] = True
    return new, grown


def test_regrowth_uses_the_dense_gradient_of_the_z_masked_loss(tmp_path):
    trainer = make_trainer(tmp_path, delta_t=4)
    zs = ZSpy(trainer)
    batches = trainer.data.train.epoch(0)
    take_steps(trainer, batches, 3)
    x, y = next(batches)
    module = copy.deepcopy(trainer.net.module)
    w = trainer.net.sparse_flat().detach().clone()
    mask = copy.deepcopy(trainer.net.mask)
    trainer.train_step(x, y)  # step 4: a mask update
    z = zs.draws[-1]
    w_eff = (mask.float * z * w).requires_grad_()
    loss, _ = independent_loss(module, trainer.net, w_eff, x, y, trainer.cfg.weight_decay)
    dense_grad = torch.autograd.grad(loss, w_eff)[0]
    total = trainer.cfg.epochs * trainer.steps_per_epoch
    new, grown = expected_rigl_mask(mask, w, dense_grad, cosine_fraction(4, total))
    assert torch.equal(trainer.net.mask.flat, new)
    assert grown.any() and not torch.equal(new, mask.flat)
    after = trainer.net.sparse_flat().detach()
    assert (after[grown] == 0).all() and (momentum(trainer)[grown] == 0).all()
    kept = new & ~grown
    assert torch.equal(after[kept], w[kept])  # the update replaces the SGD step: nothing else moved
    assert (after[~new] == 0).all() and (momentum(trainer)[~new] == 0).all()


def test_a_just_dropped_and_regrown_weight_restarts_at_zero(tmp_path):
    trainer = make_trainer(tmp_path, delta_t=1000)
    take_steps(trainer, trainer.data.train.epoch(0), 3)
    w = trainer.net.sparse_flat().detach().clone()
    mask = trainer.net.mask
    assert mask.nnz[1] < mask.numels[1]  # the second conv is sparse (ERK makes the first dense)
    second = slice(mask.numels[0], mask.numels[0] + mask.numels[1])
    active = torch.nonzero(mask.flat[second]).flatten() + mask.numels[0]
    k = math.floor(0.3 * mask.nnz[1])
    smallest = active[w[active].abs().argsort()[:k]]  # the weights the update drops
    score = torch.zeros_like(w)
    score[smallest] = 1e6  # ... and regrows at once
    trainer.cigl.update_mask(score, 0.3)
    assert mask.flat[smallest].all()
    assert (w[smallest] != 0).all()
    assert (trainer.net.sparse_flat()[smallest] == 0).all() and (momentum(trainer)[smallest] == 0).all()


def test_mask_updates_every_delta_t_steps_until_three_quarters_of_training(tmp_path):
    trainer = make_trainer(tmp_path, epochs=4, delta_t=3)  # 24 steps, T_end = 18
    batches = [b for e in range(4) for b in trainer.data.train.epoch(e)]
    changed, no_sgd = [], []
    for t, (x, y) in enumerate(batches, start=1):
        mask_before, w_before = trainer.net.mask.flat.clone(), trainer.net.sparse_flat().detach().clone()
        trainer.train_step(x, y)
        if not torch.equal(mask_before, trainer.net.mask.flat):
            changed.append(t)
        w_after = trainer.net.sparse_flat().detach()
        kept = mask_before & trainer.net.mask.flat & (w_after != 0)  # not dropped, not regrown
        if torch.equal(w_after[kept], w_before[kept]):
            no_sgd.append(t)  # an update step: M changes instead of an SGD step
    assert changed == [3, 6, 9, 12, 15]  # step 18 = T_end has drop fraction 0
    assert no_sgd == [3, 6, 9, 12, 15, 18]  # every ΔT steps up to T_end, none after


def test_drop_count_is_the_floor_of_fraction_times_nnz():
    mask = DeterministicMask([torch.Size([20])], torch.arange(20) < 10)
    w = torch.linspace(1, 2, 20) * (torch.arange(20) < 10)
    score = torch.where(torch.arange(20) < 10, 0.0, 1.0 + torch.arange(20.0))
    grown = mask.update(w, score, 0.29, "gradient")  # 0.29 · 10 = 2.9 → 2
    assert int(grown.sum()) == 2
    assert mask.flat[:10].tolist() == [False, False] + [True] * 8
    assert grown.tolist() == [False] * 18 + [True, True]


# -- weight decay, defaults -----------------------------------------------------------------
def test_weight_decay_is_counted_once(tmp_path):
    trainer = make_trainer(tmp_path, momentum=0.0, nesterov=False, lr=0.1, delta_t=1000)
    zs = ZSpy(trainer)
    x, y = next(trainer.data.train.epoch(0))
    module = copy.deepcopy(trainer.net.module)
    w = trainer.net.sparse_flat().detach().clone()
    trainer.train_step(x, y)
    m, z = trainer.net.mask.float, zs.draws[-1]
    w_eff = (m * z * w).requires_grad_()
    loss, theta = independent_loss(module, trainer.net, w_eff, x, y, trainer.cfg.weight_decay)
    grads = torch.autograd.grad(loss, [w_eff, *theta.values()])
    moved = (m * z).bool()
    torch.testing.assert_close(trainer.net.sparse_flat().detach()[moved], (w - 0.1 * grads[0])[moved],
                               rtol=1e-10, atol=1e-13)
    for p, t, g in zip(trainer.net.other_params, theta.values(), grads[1:]):
        torch.testing.assert_close(p.detach(), (t - 0.1 * g).detach(), rtol=1e-10, atol=1e-13)


def test_t_star_and_keep_defaults():
    paper = TrainConfig().resolved(n_train=45_000)
    assert paper.epochs == 250 and paper.wma_start_epoch == 200  # official begin_save = 200
    assert TrainConfig(epochs=10).resolved(n_train=1000).wma_start_epoch == 8  # 0.8 · epochs
    assert paper.keep == pytest.approx(0.99)  # the official code's; chosen by the cpu-study (validation NLL)
    assert paper.random_mask_rate == pytest.approx(0.01)  # resolved, so config.json records it
    assert TrainConfig(method="rigl").resolved(n_train=45_000).keep == 1.0
    assert TrainConfig(method="cigl-no-wma").keep == pytest.approx(0.99)  # the ablation keeps CigL's Z
    assert TrainConfig(method="rigl-wdp").keep == pytest.approx(0.9)  # the dropout baselines: rate 0.1
    assert TrainConfig(method="rigl-mcdp").dropout == pytest.approx(0.1)
    assert TrainConfig(random_mask_rate=0.2).keep == pytest.approx(0.8)  # a given rate wins


# -- the guide at σ > 0 (paper Eq. 3) and the SVI regrowth score -----------------------------
WD, N, KEEP = 5e-4, 4500, 0.9


def tiny_net(seed: int = 0) -> SparseNetwork:
    """A sparse conv net without max-pool or BatchNorm: its output is smooth in W (up to ReLU
    kinks).  Max-pool ties between exact zeros and BatchNorm of an all-zero channel (which
    rescales σ-sized noise to unit size) would make the σ → 0 limit discontinuous."""
    torch.manual_seed(seed)
    module = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2),
        nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5),
    ).double()
    names = sparse_parameter_names(module)
    shapes = [dict(module.named_parameters())[n].shape for n in names]
    mask = DeterministicMask.random(shapes, layer_nnz(shapes, densities_for(shapes, 0.7, "erk")),
                                    torch.Generator().manual_seed(seed), dtype=torch.float64)
    net = SparseNetwork(module, names, mask)
    net.apply_mask_()
    return net


def tiny_batch(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(16, 3, 8, 8, generator=g, dtype=torch.float64), torch.randint(0, 5, (16,), generator=g)


def normal_log_density(x: torch.Tensor, loc: torch.Tensor, scale: float) -> float:
    x, loc = x.detach(), loc.detach()
    return float((-0.5 * ((x - loc) / scale) ** 2 - math.log(scale) - 0.5 * math.log(2 * math.pi)).sum())


def test_guide_log_density_has_the_u_level_and_scale_sigma():
    """log q(U, W | Z) = log N(U; V, σ²) + log N(W; M⊙Z⊙U, σ²), evaluated by hand."""
    net, (x, y) = tiny_net(), tiny_batch()
    z = random_keep_mask(sum(net.mask.numels), KEEP, torch.Generator().manual_seed(2), dtype=torch.float64)
    sigma = 0.05
    trace = poutine.trace(HierarchicalGuide(net, sigma, KEEP)).get_trace(x, y, z)
    u, w, v = trace.nodes["U"]["value"], trace.nodes["W"]["value"], net.sparse_flat().detach()
    trace.compute_log_prob()
    expected = normal_log_density(u, v, sigma) + normal_log_density(w, net.mask.float * z * u, sigma)
    got = float((trace.nodes["U"]["log_prob_sum"] + trace.nodes["W"]["log_prob_sum"]).detach())
    assert got == pytest.approx(expected, rel=1e-10)


def test_guide_samples_have_the_hierarchical_moments():
    """E[W] = M⊙Z⊙V; Var W = σ²(1 + M⊙Z): 2σ² where M⊙Z = 1, σ² elsewhere."""
    net, (x, y) = tiny_net(), tiny_batch()
    z = random_keep_mask(sum(net.mask.numels), KEEP, torch.Generator().manual_seed(2), dtype=torch.float64)
    sigma, draws = 0.05, 400
    guide = HierarchicalGuide(net, sigma, KEEP)
    pyro.set_rng_seed(0)
    with torch.no_grad():
        samples = torch.stack([guide(x, y, z) for _ in range(draws)])
    mz = net.mask.float * z
    v = net.sparse_flat().detach()
    var = samples.var(0)
    for sel, expected_var in ((mz == 1, 2 * sigma**2), (mz == 0, sigma**2)):
        assert var[sel].mean().item() == pytest.approx(expected_var, rel=0.03)
    se = math.sqrt(2 * sigma**2 / draws)
    assert (samples.mean(0) - mz * v).abs().max().item() < 6 * se


def svi_score(net: SparseNetwork, sigma: float, x, y, z, seed: int = 0) -> torch.Tensor:
    s = prior_scale_from_weight_decay(WD, N)
    objective = ElboObjective(SparseBayesianModel(net, s, N, keep=KEEP), HierarchicalGuide(net, sigma, KEEP), N)
    pyro.set_rng_seed(seed)
    loss, _ = objective(x, y, z, track_score=True)
    loss.backward()
    net.module.zero_grad(set_to_none=True)
    return objective.regrowth_score().detach().clone()


def regrown_set(net: SparseNetwork, score: torch.Tensor) -> torch.Tensor:
    mask = copy.deepcopy(net.mask)
    return mask.update(net.sparse_flat().detach(), score, 0.3, "gradient")


def score_by_hand(net: SparseNetwork, w: torch.Tensor, x, y) -> torch.Tensor:
    """∂/∂W [CE(f(x; W, θ), y) + ‖W‖² / (2 s² N)] at W, through a plain functional forward."""
    w = w.detach().clone().requires_grad_()
    module = copy.deepcopy(net.module)
    params = dict(module.named_parameters())
    views = w.split(net.mask.numels)
    weights = {n: v.view(params[n].shape) for n, v in zip(net.sparse_names, views)}
    logits = functional_call(module, {**weights, **{n: params[n] for n in net.other_names}}, (x,))
    s = prior_scale_from_weight_decay(WD, N)
    loss = F.cross_entropy(logits, y) + w.square().sum() / (2 * s**2 * N)
    return torch.autograd.grad(loss, w)[0]


def test_svi_regrowth_score_at_sigma_zero_is_the_dense_gradient():
    net, (x, y) = tiny_net(), tiny_batch()
    z = random_keep_mask(sum(net.mask.numels), KEEP, torch.Generator().manual_seed(3), dtype=torch.float64)
    expected = score_by_hand(net, net.mask.float * z * net.sparse_flat(), x, y)
    torch.testing.assert_close(svi_score(net, 0.0, x, y, z), expected, rtol=1e-10, atol=1e-13)
    plain = PlainObjective(net, WD)  # and the plain engine's score is the same function
    loss, _ = plain(x, y, z, track_score=True)
    loss.backward()
    torch.testing.assert_close(plain.regrowth_score(), expected, rtol=1e-10, atol=1e-13)
    net.module.zero_grad(set_to_none=True)
    assert (expected[~net.mask.flat] != 0).any()  # dense: non-zero off the support too


def test_svi_regrowth_score_at_positive_sigma_is_the_models_gradient_at_the_sampled_w():
    """At σ = 0.05 the score is ∂[NLL/N − log p(W)/N]/∂W at the W the guide sampled — no log q."""
    net, (x, y) = tiny_net(), tiny_batch()
    z = random_keep_mask(sum(net.mask.numels), KEEP, torch.Generator().manual_seed(5), dtype=torch.float64)
    s = prior_scale_from_weight_decay(WD, N)
    guide = HierarchicalGuide(net, 0.05, KEEP)
    objective = ElboObjective(SparseBayesianModel(net, s, N, keep=KEEP), guide, N)
    pyro.set_rng_seed(1)
    loss, w = objective(x, y, z, track_score=True)
    loss.backward()
    net.module.zero_grad(set_to_none=True)
    assert (w[~net.mask.flat] != 0).all()  # W was sampled off the support too (σ > 0)
    torch.testing.assert_close(objective.regrowth_score(), score_by_hand(net, w, x, y), rtol=1e-10, atol=1e-13)


def test_svi_regrowth_converges_to_the_sigma_zero_choice_as_sigma_falls():
    """The score leaves out the guide's ∂log q/∂W (∝ 1/σ), so as σ → 0 it tends to the σ = 0
    score and the regrown set to the σ = 0 set."""
    net, (x, y) = tiny_net(), tiny_batch()
    z = random_keep_mask(sum(net.mask.numels), KEEP, torch.Generator().manual_seed(4), dtype=torch.float64)
    reference = svi_score(net, 0.0, x, y, z)
    reference_set = regrown_set(net, reference)
    errors, overlaps = [], []
    for sigma in (1e-2, 1e-3, 1e-4):
        score = svi_score(net, sigma, x, y, z)
        errors.append(((score - reference).norm() / reference.norm()).item())
        picked = regrown_set(net, score)
        overlaps.append(int((picked & reference_set).sum()) / int(reference_set.sum()))
    assert errors[0] > errors[1] > errors[2] and errors[2] < 1e-2 and errors[2] < 0.1 * errors[0], errors
    assert overlaps[-1] == 1.0 and overlaps[0] <= overlaps[-1], overlaps


def test_the_svi_loss_is_reported_in_parts_comparable_with_the_plain_engine(tmp_path):
    """train_loss = data term + regulariser; at σ = 0 the SVI data term is the plain engine's
    cross-entropy, and its regulariser is the plain L2 term plus the prior's normaliser n·log(s√2π)/N."""
    histories = {}
    for engine in ("plain", "svi"):
        trainer = make_trainer(tmp_path / engine, engine=engine, epochs=1, delta_t=1000)
        trainer.fit()
        histories[engine] = trainer.history[0]
        net, n = trainer.net, trainer.data.train.num_samples
    plain, svi = histories["plain"], histories["svi"]
    for h in (plain, svi):
        assert h["train_loss"] == pytest.approx(h["train_data_loss"] + h["train_regulariser"], rel=1e-12)
    assert svi["train_data_loss"] == pytest.approx(plain["train_data_loss"], rel=1e-9)
    s = prior_scale_from_weight_decay(5e-4, n)
    dims = sum(net.mask.numels) + sum(p.numel() for p in net.other_params)
    constant = dims * math.log(s * math.sqrt(2 * math.pi)) / n
    # equal up to the constant; the L2 parts agree to 1e-3 of their size (the two engines round
    # differently, and small-cnn's max-pool ties make the weights drift by ~1e-4 over an epoch)
    assert svi["train_regulariser"] - plain["train_regulariser"] == pytest.approx(
        constant, abs=1e-3 * plain["train_regulariser"])
    assert constant > 100 * plain["train_regulariser"]  # the constant is what made the SVI loss look large
