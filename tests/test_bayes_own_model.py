"""The Bayesian side on a user's own model (the new-user trial of 2026-12-06): the Pyro model and
guide on a drop-in CigL's network, the likelihoods' shapes, keep and N agreeing between the
model, the guide and the objective, and the drop-in object under no-grad passes, gradient
accumulation and dropout.  Each behaviour here was silently wrong before; now it works as the
user meant or is refused with one clear error."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from pyro.infer import Predictive
from torch import nn
from torch.func import functional_call

from cigl_bayes import CigL
from cigl_bayes.inference import ElboObjective, HierarchicalGuide, SparseBayesianModel, posterior


def mlp(out=4, dropout=0.0, batchnorm=False):
    torch.manual_seed(0)
    layers = [nn.Linear(6, 16)]
    if batchnorm:
        layers.append(nn.BatchNorm1d(16))
    layers.append(nn.ReLU())
    if dropout:
        layers.append(nn.Dropout(dropout))
    if batchnorm:
        layers += [nn.Linear(16, 16), nn.BatchNorm1d(16), nn.ReLU()]
    layers.append(nn.Linear(16, out))
    return nn.Sequential(*layers).double()


def data(n=32, out=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 6, generator=g, dtype=torch.float64), torch.randint(0, out, (n,), generator=g)


def drop_in(model, **kwargs):
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    args = {"sparsity": 0.7, "keep": 0.8, "total_steps": 40, "delta_t": 2, "seed": 3, **kwargs}
    return opt, CigL(model, opt, **args)


def elbo(net, keep, *, sigma=0.0, n_train=64, likelihood="categorical", kwargs=None):
    model = SparseBayesianModel(net, 0.5, n_train, keep=keep, likelihood=likelihood, likelihood_kwargs=kwargs)
    return ElboObjective(model, HierarchicalGuide(net, sigma=sigma, keep=keep), n_train)


# -- the Pyro model and guide on a drop-in CigL's network --------------------------------------------
def test_the_pyro_model_on_an_attached_cigls_network_computes_with_the_sampled_w():
    model = mlp()
    _, cigl = drop_in(model)  # attached: model(x) in train mode would compute with M⊙Z⊙W
    obj = elbo(cigl.net, cigl.keep, sigma=0.5)
    x, y = data()
    torch.manual_seed(7)
    obj(x, y, cigl.z)
    w = obj.guide.last_w.detach()
    assert not torch.allclose(w, cigl.net.effective_flat(cigl.z).detach())  # σ = 0.5: a draw away from M⊙Z⊙V
    plain = cigl.plain_copy().train()
    expected = functional_call(plain, dict(zip(cigl.net.sparse_names, cigl.net.mask.views(w))), (x,))
    assert torch.allclose(obj.model.last_output.detach(), expected)


def test_a_users_functional_call_on_the_attached_module_keeps_the_callers_weights():
    model = mlp()
    _, cigl = drop_in(model)
    x, _ = data()
    mine = {name: torch.full_like(p, 0.01) for name, p in model.named_parameters() if name.endswith("weight")}
    got = functional_call(model.train(), mine, (x,))
    plain = cigl.plain_copy().train()
    assert torch.allclose(got, functional_call(plain, mine, (x,)))
    assert not torch.allclose(got, model(x))  # model(x) itself still computes with M⊙Z⊙W


def test_pyro_predictive_samples_labels_when_none_are_given():
    model = mlp()
    _, cigl = drop_in(model, attach=False)
    obj = elbo(cigl.net, 1.0)
    x, _ = data(n=5)
    draws = Predictive(obj.model, guide=obj.guide, num_samples=3)(x, None)
    assert draws["y"].shape == (3, 5) and draws["y"].dtype == torch.int64


# -- likelihoods: shapes, soft labels -------------------------------------------------------------
def test_gaussian_targets_of_shape_b_and_b1_give_the_same_elbo_and_mismatches_are_refused():
    model = mlp(out=1)
    _, cigl = drop_in(model, attach=False, keep=None, method="rigl")
    obj = elbo(cigl.net, 1.0, likelihood="gaussian", kwargs={"precision": 2.0})
    x, _ = data()
    y = torch.randn(32, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    flat, _ = obj(x, y, None)
    column, _ = obj(x, y.view(32, 1), None)
    assert torch.allclose(flat, column)
    assert torch.allclose(obj.last_data_loss, F.mse_loss(model(x).squeeze(-1), y) * 2.0 / 2)
    with pytest.raises(ValueError, match=r"gaussian likelihood: targets of shape \(32, 2\)"):
        obj(x, y.view(32, 1).repeat(1, 2), None)


def test_a_gaussian_data_point_of_k_values_is_scored_as_their_sum():
    model = mlp(out=2)
    _, cigl = drop_in(model, attach=False, keep=None, method="rigl")
    obj = elbo(cigl.net, 1.0, likelihood="gaussian", kwargs={"precision": 3.0})
    x, _ = data()
    g = torch.Generator().manual_seed(4)
    differences = []
    for _ in range(2):
        y = torch.randn(32, 2, dtype=torch.float64, generator=g)
        loss, _ = obj(x, y, None)
        assert torch.allclose(obj.last_data_loss, 1.5 * (model(x) - y).square().sum(1).mean())
        differences.append(float(loss.detach() - obj.last_data_loss))
    assert differences[0] == pytest.approx(differences[1], abs=1e-9)  # −ELBO/N − data term: no y in it


def test_predictive_samples_gaussian_targets_shaped_like_the_head():
    model = mlp(out=1)
    _, cigl = drop_in(model, attach=False, keep=None, method="rigl")
    obj = elbo(cigl.net, 1.0, likelihood="gaussian")
    x, _ = data(n=5)
    assert Predictive(obj.model, guide=obj.guide, num_samples=3)(x, None)["y"].shape == (3, 5)


def test_float_class_indices_are_named():
    model = mlp()
    _, cigl = drop_in(model, attach=False)
    x, y = data()
    with pytest.raises(ValueError, match=r"float targets of shape \(32,\); class indices must be integers"):
        elbo(cigl.net, cigl.keep)(x, y.double(), cigl.z)


def test_categorical_targets_of_shape_b1_are_refused():
    model = mlp()
    _, cigl = drop_in(model, attach=False)
    obj = elbo(cigl.net, cigl.keep)
    x, y = data()
    expected = r"categorical likelihood: targets of shape \(32, 1\).*of shape \(32,\)"
    with pytest.raises(ValueError, match=expected) as err:
        obj(x, y.view(32, 1), cigl.z)
    assert "\n" not in str(err.value)  # one line: Pyro's trace shapes are not appended


def test_the_soft_likelihood_trains_like_categorical_on_one_hot_labels():
    model = mlp()
    _, cigl = drop_in(model, attach=False)
    x, y = data()
    z = cigl.z
    hard, _ = elbo(cigl.net, cigl.keep)(x, y, z)
    soft_obj = elbo(cigl.net, cigl.keep, likelihood="soft")
    soft, _ = soft_obj(x, F.one_hot(y, 4).double(), z)
    assert torch.allclose(hard, soft)
    assert torch.allclose(soft_obj.last_data_loss, F.cross_entropy(cigl.net.forward(x, cigl.net.effective_flat(z)), y))


# -- keep and N agree between the model, the guide and the objective ------------------------------------
def test_a_z_with_zeros_under_the_default_keep_is_refused_not_a_nan_loss():
    model = mlp()
    _, cigl = drop_in(model, attach=False)
    x, y = data()
    model_site = SparseBayesianModel(cigl.net, 0.5, 64)  # keep left at its default 1.0
    obj = ElboObjective(model_site, HierarchicalGuide(cigl.net), 64)
    with pytest.raises(ValueError, match="Z has zeros but keep=1.0") as err:
        obj(x, y, cigl.z)
    assert "\n" not in str(err.value)


def test_model_guide_and_objective_that_disagree_are_refused():
    model = mlp()
    _, cigl = drop_in(model, attach=False)
    other = drop_in(mlp(), attach=False)[1]
    m = SparseBayesianModel(cigl.net, 0.5, 64, keep=0.8)
    with pytest.raises(ValueError, match="keep 0.8 and the guide's keep 0.5 differ"):
        ElboObjective(m, HierarchicalGuide(cigl.net, keep=0.5), 64)
    with pytest.raises(ValueError, match="n_train 128 differs from the model's n_train 64"):
        ElboObjective(m, HierarchicalGuide(cigl.net, keep=0.8), 128)
    with pytest.raises(ValueError, match="different networks"):
        ElboObjective(m, HierarchicalGuide(other.net, keep=0.8), 64)
    with pytest.raises(ValueError, match=r"keep probability must be in \(0, 1\], got 1.5"):
        SparseBayesianModel(cigl.net, 0.5, 64, keep=1.5)
    with pytest.raises(ValueError, match=r"keep probability must be in \(0, 1\], got 0"):
        HierarchicalGuide(cigl.net, keep=0)


# -- the drop-in object: no-grad passes, gradient accumulation ------------------------------------
def _update_step(model, opt, cigl, batches, *, no_grad_pass=False):
    opt.zero_grad()
    if no_grad_pass:  # a metric on the training batch, model still in train mode
        with torch.no_grad():
            model(batches[0][0])
    for x, y in batches:
        F.cross_entropy(model(x), y).backward()
    assert cigl.is_update_step
    cigl.step()


def test_a_no_grad_pass_in_train_mode_before_an_update_step_changes_nothing():
    model = mlp()
    opt, cigl = drop_in(model, delta_t=1)
    twin_model, twin_opt, twin = copy.deepcopy((model, opt, cigl))
    x, y = data()
    _update_step(model, opt, cigl, [(x, y)], no_grad_pass=True)
    _update_step(twin_model, twin_opt, twin, [(x, y)])
    assert torch.equal(cigl.net.mask.flat, twin.net.mask.flat)


def test_gradient_accumulation_scores_regrowth_on_the_whole_batch():
    model = mlp()
    opt, cigl = drop_in(model, delta_t=1, keep=1.0, method="rigl", sparsity=0.9)
    whole, last = copy.deepcopy((model, opt, cigl)), copy.deepcopy((model, opt, cigl))
    x, y = data(n=64)
    _update_step(model, opt, cigl, [(x[:32], y[:32]), (x[32:], y[32:])])  # two micro-batches
    out = whole[0](x)  # one pass, the same summed loss
    (F.cross_entropy(out[:32], y[:32]) + F.cross_entropy(out[32:], y[32:])).backward()
    whole[2].step()
    assert torch.equal(cigl.net.mask.flat, whole[2].net.mask.flat)
    _update_step(*last, [(x[32:], y[32:])])  # scored on the last micro-batch alone: another regrowth
    assert not torch.equal(cigl.net.mask.flat, last[2].net.mask.flat)


def test_a_micro_batch_thrown_away_with_zero_grad_leaves_the_regrowth_score():
    """forward and backward on a batch, zero_grad (a non-finite gradient skipped, say), then the
    step's real batch: the score is the real batch's gradient, as the optimizer's .grad is."""
    model = mlp()
    opt, cigl = drop_in(model, delta_t=1, keep=1.0, method="rigl", sparsity=0.9)
    twin = copy.deepcopy((model, opt, cigl))
    x, y = data(n=64)
    assert cigl.is_update_step
    opt.zero_grad()
    F.cross_entropy(model(x[:32]), y[:32]).backward()
    opt.zero_grad()  # thrown away
    F.cross_entropy(model(x[32:]), y[32:]).backward()
    cigl.step()
    _update_step(*twin, [(x[32:], y[32:])])
    assert torch.equal(cigl.net.mask.flat, twin[2].net.mask.flat)


def test_a_step_after_only_a_no_grad_pass_is_refused():
    model = mlp()
    opt, cigl = drop_in(model)
    x, _ = data()
    with torch.no_grad():
        model.train()(x)
    with pytest.raises(RuntimeError, match="without a training forward pass .*gradients on"):
        cigl.step()


def test_the_elbo_trains_through_an_attached_cigl_as_through_a_detached_one():
    """The Pyro objective on ``cigl.net`` with CigL attached (its forward leaves the sampled W alone)
    follows the same trajectory as with ``attach=False``, mask updates included."""
    runs = []
    for attach in (True, False):
        model = mlp()
        opt, cigl = drop_in(model, attach=attach, delta_t=3, total_steps=12)
        obj = elbo(cigl.net, cigl.keep)
        x, y = data(n=64)
        for i in range(8):
            opt.zero_grad()
            loss, _ = obj(x[8 * i:8 * i + 8], y[8 * i:8 * i + 8], cigl.z, track_score=cigl.needs_score)
            loss.backward()
            cigl.step(obj.regrowth_score() if cigl.needs_score else None)
        runs.append((cigl.net.mask.flat.clone(), cigl.net.sparse_flat().detach().clone()))
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])


def test_a_functional_call_that_swaps_some_sparse_weights_gets_m_z_w_for_the_others():
    model = mlp()
    _, cigl = drop_in(model)
    x, _ = data()
    mine = {"0.weight": torch.full_like(model[0].weight, 0.01)}
    got = functional_call(model.train(), mine, (x,))
    views = dict(zip(cigl.net.sparse_names, cigl.net.mask.views(cigl.net.effective_flat(cigl.z))))
    expected = functional_call(cigl.plain_copy().train(), {**mine, "2.weight": views["2.weight"]}, (x,))
    assert torch.allclose(got, expected)


def test_a_tied_weight_is_one_sparse_parameter():
    torch.manual_seed(0)
    encoder, decoder = nn.Linear(8, 8), nn.Linear(8, 8)
    decoder.weight = encoder.weight
    model = nn.Sequential(encoder, nn.ReLU(), decoder).double()
    _, cigl = drop_in(model, sparsity=0.5)
    assert cigl.net.sparse_names == ["0.weight"]
    assert torch.equal(model[2].weight, model[0].weight) and bool((model[0].weight == 0).any())


# -- the posterior of an object in memory -----------------------------------------------------------
def trained(keep_samples=True, **model_kwargs):
    model = mlp(**model_kwargs)
    opt, cigl = drop_in(model, collect_from_epoch=1, keep_samples=keep_samples, total_steps=12, delta_t=4)
    x, y = data(n=64)
    for _epoch in range(3):
        for i in range(4):
            opt.zero_grad()
            F.cross_entropy(model(x[16 * i:16 * (i + 1)]), y[16 * i:16 * (i + 1)]).backward()
            cigl.step()
        cigl.end_epoch()
    return model, cigl, [(x[:32], y[:32]), (x[32:], y[32:])]


def test_wma_is_predicted_when_only_the_mean_was_kept():
    model, cigl, loader = trained(keep_samples=False, batchnorm=True)
    post = posterior(cigl, loader)
    x, _ = data(n=8, seed=9)
    probs = post.predict(x, "wma").probs
    assert torch.allclose(probs, torch.softmax(cigl.averaged_model(loader)(x), -1))
    with pytest.raises(ValueError, match="keep_samples=False keeps only their mean.*use predictor 'wma'"):
        post.predict(x, "predictive")


def test_batchnorm_recomputation_with_dropout_is_deterministic_and_leaves_the_callers_random_stream():
    model, cigl, loader = trained(batchnorm=True, dropout=0.5)
    state = torch.get_rng_state()
    first = cigl.averaged_model(loader)
    assert torch.equal(torch.get_rng_state(), state)
    torch.rand(3)  # the caller's stream moves on (a training step): the statistics must not
    second = cigl.averaged_model(loader)
    for name, buf in first.state_dict().items():
        if "running_" in name:
            assert torch.equal(buf, second.state_dict()[name]), name


def test_the_posterior_of_an_object_keeps_float64_and_names_what_it_lacks():
    model, cigl, loader = trained(batchnorm=True)
    post = posterior(cigl, loader)
    x, _ = data(n=8, seed=9)
    assert post.predict(x, "final").probs.dtype == torch.float64
    assert "sample_stats" not in post.to_inferencedata().groups()  # no training loss was recorded
    with pytest.raises(ValueError, match="fitted no temperature.*fit_temperature"):
        post.predict(x, "temperature_scaled")


def test_a_single_input_instead_of_a_batch_is_named_in_one_line():
    model, cigl, loader = trained(batchnorm=True)
    x, _ = data(n=8, seed=9)
    with pytest.raises(ValueError, match=r"your model failed on a batch of shape \(6,\) \(.*\); .*unsqueeze\(0\)"
                       ) as error:
        posterior(cigl, loader).predict(x[0], "wma")
    assert "\n" not in str(error.value)


def test_a_failed_prediction_leaves_the_final_weights_and_statistics_in_place():
    model, cigl, loader = trained(batchnorm=True)
    post = posterior(cigl, loader)
    x, _ = data(n=8, seed=9)
    final = post.predict(x, "final").probs
    with pytest.raises(ValueError, match="your model failed"):
        post.predict(x[0], "wma")  # fails in the forward, after the WMA weights were loaded
    with pytest.raises(ValueError, match="recomputes BatchNorm statistics on the bn_loader you gave it"):
        post.predict(x, "wma", bn_protocol="recomputed-augmented")
    assert torch.equal(post.predict(x, "final").probs, final)


def test_a_new_bn_batches_recomputes_the_statistics():
    model, cigl, loader = trained(batchnorm=True)  # two BatchNorm batches
    post = posterior(cigl, loader)
    x, _ = data(n=8, seed=9)
    every = post.predict(x, "wma").probs
    post.bn_batches = 1
    first_only = post.predict(x, "wma").probs
    assert torch.equal(first_only, posterior(cigl, loader, bn_batches=1).predict(x, "wma").probs)
    assert not torch.equal(first_only, every)


def test_outputs_that_are_not_one_row_of_logits_per_input_are_refused():
    torch.manual_seed(0)
    model = nn.Sequential(*mlp(), nn.Unflatten(1, (4, 1)))  # (B, 4, 1): not (B, classes)
    opt, cigl = drop_in(model, total_steps=4, delta_t=2)
    x, y = data(n=32)
    for i in range(4):
        opt.zero_grad()
        F.cross_entropy(model(x[8 * i:8 * (i + 1)]), y[8 * i:8 * (i + 1), None]).backward()
        cigl.step()
    with pytest.raises(ValueError, match=r"returned outputs of shape \(8, 4, 1\) for a batch of shape \(8, 6\)"):
        posterior(cigl).predict(x[:8], "final")
    model[-1] = FirstHalf()  # (B, 4) → (B/2, 4): two dimensions, but not a row per input
    with pytest.raises(ValueError, match=r"returned outputs of shape \(8, 4\) for a batch of shape \(16, 6\)"):
        posterior(cigl).predict(x[:16], "final")


class FirstHalf(nn.Module):
    def forward(self, x):
        return x[: len(x) // 2]


class TupleOut(nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x), x  # (logits, features): not what predict takes


def test_a_model_that_returns_a_tuple_is_named():
    model = TupleOut(mlp())
    opt, cigl = drop_in(model, total_steps=2, delta_t=2)
    x, y = data(n=16)
    for i in range(2):
        opt.zero_grad()
        F.cross_entropy(model(x[8 * i:8 * (i + 1)])[0], y[8 * i:8 * (i + 1)]).backward()
        cigl.step()
    with pytest.raises(ValueError, match="the network returned a tuple, not a tensor of logits"):
        posterior(cigl).predict(x[:8], "final")


# -- docs/api.md, "The Bayesian reading on your own model (Pyro)" ------------------------------------------
def test_the_pyro_example_of_the_api_docs_runs_and_shows_the_identity(capsys):
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "api.md").read_text()
    start = text.index("## The Bayesian reading on your own model (Pyro)")
    section = text[start:text.index("\n## ", start + 1)]
    (block,) = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    exec(compile(block, "docs/api.md", "exec"), {"__name__": "api_doc_pyro"})
    printed = capsys.readouterr().out
    identity = re.findall(r"-ELBO/N - plain loss (\S+) const (\S+)", printed)
    assert len(identity) == 2  # one line per random mask: the difference is the priors' constant for both
    for difference, const in identity:
        assert abs(float(difference) - float(const)) < 1e-4
    accuracy, samples = re.search(r"test accuracy (\S+) samples (\d+)", printed).groups()
    assert float(accuracy) > 0.8 and int(samples) == 5  # epochs 10–14 collected
