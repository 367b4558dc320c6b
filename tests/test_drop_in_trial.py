"""The drop-in CigL object and its posterior under the fourth new-user trial (2026-12-06): hooks
on the user's module, ``final_model`` with a loader, a one-column model, what the posterior
records, and the default T*.  Each finding is either made to work as the user meant or refused
with one clear error, never a silently wrong result."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cigl_bayes import CigL
from cigl_bayes.inference import posterior
from tests.test_drop_in import UserCNN


def mlp(outputs=3):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, outputs))


def cnn_batches(n=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(16, 3, 8, 8, generator=g), torch.randint(0, 10, (16,), generator=g)) for _ in range(n)]


def train(model, opt, cigl, data, epochs):
    for _ in range(epochs):
        for x, y in data:
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            cigl.step()
        cigl.end_epoch()


def bn_mlp_posterior(keep: float | None = None):
    """(posterior of a CigL MLP with BatchNorm trained 5 epochs, 3 samples; 40 held-out inputs; their labels)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(120, 8)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    data = list(zip(x[:80].split(20), y[:80].split(20)))
    cigl = CigL(model, opt, sparsity=0.5, total_steps=20, collect_from_epoch=2, update_end=0.3, keep=keep)
    train(model, opt, cigl, data, 5)
    return posterior(cigl, data), x[80:], y[80:]


@pytest.mark.parametrize("method", ["dense", "cigl"])
def test_the_modules_own_hooks_run_once_per_training_forward(method):
    """CigL's forward must not call the module a second time: a pre-hook that scales the input
    would scale it twice, a counting hook would count two calls."""
    model, twin = mlp(), mlp()
    calls = []
    for m in (model, twin):
        m.register_forward_pre_hook(lambda mod, args: (args[0] * 10,))
    model.register_forward_hook(lambda *args: calls.append(1))
    sparsity = 0.0 if method == "dense" else 0.5
    cigl = CigL(model, torch.optim.SGD(model.parameters(), lr=0.1), method=method, sparsity=sparsity,
                total_steps=10, keep=1.0 if method == "cigl" else None)
    twin.load_state_dict(model.state_dict())  # the same weights, M⊙W, no CigL (Z keeps all at keep 1)
    x = torch.randn(4, 8)
    model.train(), twin.train()
    torch.testing.assert_close(model(x), twin(x), rtol=0, atol=0)
    assert len(calls) == 1
    assert cigl._w is not None  # the forward went through CigL (it recorded this step's M⊙Z⊙W)


def test_final_model_with_a_loader_recomputes_batchnorm_as_averaged_model_does():
    torch.manual_seed(0)
    model = UserCNN()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    cigl = CigL(model, opt, sparsity=0.8, keep=0.7, total_steps=12, delta_t=3, collect_from_epoch=1, seed=2)
    data = cnn_batches()
    train(model, opt, cigl, data, 2)
    tracked = cigl.final_model()
    given = cigl.final_model(data)
    clean = cigl.final_model(data, protocol="recomputed-clean")
    for name, buf in given.state_dict().items():
        if "running_" in name:
            torch.testing.assert_close(buf, clean.state_dict()[name], rtol=0, atol=0)
            assert not torch.allclose(buf, tracked.state_dict()[name]), name  # the loader was used
    with pytest.raises(ValueError, match="would not use bn_loader"):
        cigl.final_model(data, protocol="tracked")


def test_averaged_model_of_a_method_that_collects_nothing_names_the_method():
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    cigl = CigL(model, opt, method="rigl", sparsity=0.5, total_steps=4)
    train(model, opt, cigl, [(torch.randn(4, 8), torch.randint(0, 3, (4,)))] * 2, 2)
    with pytest.raises(ValueError, match="'rigl' collects no weight samples"):
        cigl.averaged_model()


def test_predict_refuses_a_model_with_one_output_column():
    model = mlp(outputs=1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    cigl = CigL(model, opt, sparsity=0.5, total_steps=2, collect_from_epoch=0)
    opt.zero_grad()
    model(torch.randn(4, 8)).sum().backward()
    cigl.step()
    cigl.end_epoch()
    for predictor in ("final", "wma"):
        with pytest.raises(ValueError, match="1 output column"):
            posterior(cigl).predict(torch.randn(3, 8), predictor)


def test_the_posterior_records_the_objects_settings_and_optimizer_not_defaults():
    model = mlp()
    opt = torch.optim.Adam(model.parameters(), lr=0.02, weight_decay=1e-3)
    cigl = CigL(model, opt, sparsity=0.5, total_steps=10, distribution="uniform", delta_t=7, drop_fraction=0.5,
                update_end=0.6, seed=3, collect_from_epoch=1)
    train(model, opt, cigl, [(torch.randn(4, 8), torch.randint(0, 3, (4,)))] * 5, 2)
    post = posterior(cigl)
    assert post.settings == cigl.settings
    cfg = post.config
    assert (cfg.distribution, cfg.delta_t, cfg.drop_fraction, cfg.update_end, cfg.seed) == ("uniform", 7, 0.5, 0.6, 3)
    assert (cfg.lr, cfg.momentum, cfg.nesterov, cfg.weight_decay) == (0.02, 0.0, False, 1e-3)
    text = repr(post)
    assert "tensor(" not in text and len(text) < 200 and "samples=1" in text


def test_the_default_t_star_is_four_fifths_of_the_epochs_and_survives_a_resume():
    """total_steps 30 at 6 steps an epoch: 5 epochs, T* = 4, one sample; a resumed object keeps
    the T* its run fixed, and an explicit T* is kept as given."""
    data = [(torch.randn(4, 8), torch.randint(0, 3, (4,)))] * 6
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    cigl = CigL(model, opt, sparsity=0.5, total_steps=30, delta_t=2, seed=1)
    assert cigl.collect_from_epoch is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the default T* comes after the mask updates: no warning
        train(model, opt, cigl, data, 1)
        assert cigl.collect_from_epoch == 4
        state = cigl.state_dict()
        cigl.detach()  # the resumed object takes over the module
        resumed = CigL(model, opt, sparsity=0.5, total_steps=30, delta_t=2, seed=1, apply_mask=False)
        resumed.load_state_dict(state)
        assert resumed.collect_from_epoch == 4
        train(model, opt, resumed, data, 4)
    assert resumed.wma.count == 1 and resumed.samples.snapshots and len(resumed.samples) == 1
    other = mlp()
    explicit = CigL(other, torch.optim.SGD(other.parameters(), lr=0.1), sparsity=0.5, total_steps=30, delta_t=2,
                    seed=1, collect_from_epoch=2, apply_mask=False)
    explicit.load_state_dict(state)
    assert explicit.collect_from_epoch == 2


def test_end_epoch_before_any_step_with_the_default_t_star_says_why():
    model = mlp()
    cigl = CigL(model, torch.optim.SGD(model.parameters(), lr=0.1), sparsity=0.5, total_steps=10)
    with pytest.raises(RuntimeError, match="before any cigl.step"):
        cigl.end_epoch()


def test_a_sample_taken_while_the_mask_still_changes_is_warned_about_once():
    data = [(torch.randn(4, 8), torch.randint(0, 3, (4,)))] * 5
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    cigl = CigL(model, opt, sparsity=0.5, total_steps=20, delta_t=2, collect_from_epoch=0)
    with pytest.warns(UserWarning, match="mask updates go on until step 15") as caught:
        train(model, opt, cigl, data, 4)
    assert sum("mask updates go on" in str(w.message) for w in caught) == 1


def test_stepping_past_total_steps_is_warned_about_once():
    data = [(torch.randn(4, 8), torch.randint(0, 3, (4,)))] * 3
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    cigl = CigL(model, opt, sparsity=0.5, total_steps=3, collect_from_epoch=0, update_end=0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        train(model, opt, cigl, data, 1)  # exactly total_steps: silent
    with pytest.warns(UserWarning, match="beyond total_steps = 3") as caught:
        train(model, opt, cigl, data, 1)
    assert sum("beyond total_steps" in str(w.message) for w in caught) == 1


def test_a_frozen_layer_is_left_dense_by_default_and_refused_when_named():
    """Fine-tuning with a frozen first layer: the default sparse weights are the trainable ones, so
    an optimizer over the trainable parameters is accepted; naming the frozen one is refused."""
    model = mlp()
    model[0].weight.requires_grad_(False)
    frozen = model[0].weight.detach().clone()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    cigl = CigL(model, opt, sparsity=0.5, total_steps=4, collect_from_epoch=0)
    assert cigl.net.sparse_names == ["2.weight"] and torch.equal(model[0].weight, frozen)
    with pytest.raises(ValueError, match="'0.weight' is frozen"):
        CigL(model, opt, sparsity=0.5, total_steps=4, sparse_params=["0.weight", "2.weight"], apply_mask=False)


def test_an_unknown_sparse_param_suggests_the_parameter_meant():
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match=r"no such parameter in Sequential: '0'; did you mean '0.weight'\?"):
        CigL(model, opt, sparsity=0.5, total_steps=4, sparse_params=["0"])
    with pytest.raises(ValueError, match=r"'2.wieght'; did you mean '2.weight'\?"):
        CigL(model, opt, sparsity=0.5, total_steps=4, sparse_params=["2.wieght"])


def test_predict_names_what_it_cannot_read():
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    cigl = CigL(model, opt, sparsity=0.5, total_steps=4, collect_from_epoch=0)
    with pytest.raises(ValueError, match="predict takes a batch of inputs \\(a tensor\\) or a torch DataLoader, "
                                         "got a list"):
        posterior(cigl).predict([torch.randn(3, 8)], "final")
    assert posterior(cigl).predict(torch.randn(3, 8).numpy(), "final").probs.shape == (3, 3)  # arrays still work


def test_a_state_dict_keeps_its_samples_packed_and_resumes_them_exactly():
    """At 95% sparsity a sample M⊙Z⊙W in the state is its support's bits and the values on it —
    under a fifth of the dense vector's bytes — and loads back bit for bit; a state with dense
    samples (saved before packing) still loads."""
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    data = [(torch.randn(8, 64), torch.randint(0, 10, (8,)))] * 4
    cigl = CigL(model, opt, sparsity=0.95, total_steps=12, collect_from_epoch=0, keep=0.9, update_end=0.0)
    train(model, opt, cigl, data, 3)
    state = cigl.state_dict()
    packed = sum(t.numel() * t.element_size() for s in state["samples"] for t in (s["support"], s["values"]))
    dense = sum(s.sparse.numel() * s.sparse.element_size() for s in cigl.samples)
    assert len(state["samples"]) == 3 and packed < dense / 5
    cigl.detach()
    for saved in (state, {**state, "samples": [{"sparse": s.sparse, "other": s.other} for s in cigl.samples]}):
        resumed = CigL(model, opt, sparsity=0.95, total_steps=12, collect_from_epoch=0, keep=0.9, update_end=0.0,
                       apply_mask=False, attach=False)
        resumed.load_state_dict(saved)
        assert all(torch.equal(a.sparse, b.sparse) and torch.equal(a.other, b.other)
                   for a, b in zip(resumed.samples, cigl.samples))


def test_to_inferencedata_on_held_out_points_gives_arviz_its_log_likelihood():
    """log_likelihood y[0, s, i] = log p(y_i | θ_s) of sample s, the predictive draw s (by hand from
    predict's draws), so az.loo reads it; bad labels are refused by name."""
    import arviz as az

    post, x, y = bn_mlp_posterior()
    idata = post.to_inferencedata(x, y)
    draws = post.predict(x, "predictive").draws  # (3 samples, 40, 3)
    by_hand = torch.stack([d[torch.arange(40), y] for d in draws]).double().log()
    assert idata.log_likelihood["y"].shape == (1, 3, 40)
    torch.testing.assert_close(torch.from_numpy(idata.log_likelihood["y"].values[0]), by_hand)
    assert (idata.observed_data["y"].values == y.numpy()).all()
    assert (idata.posterior_predictive["y"].values[0] == draws.argmax(-1).numpy()).all()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # three draws: Pareto k is high, as arviz says
        assert az.loo(idata).n_data_points == 40
    with pytest.raises(ValueError, match="labels must lie in \\[0, 3\\)"):
        post.to_inferencedata(x, y + 3)
    with pytest.raises(ValueError, match="give both"):
        post.to_inferencedata(x)


def test_a_resume_that_forgets_the_cigl_state_is_warned_about_at_the_first_step():
    """Module and optimizer loaded (before or after CigL is built), but no cigl.load_state_dict: the
    mask is drawn afresh over trained weights.  An optimizer holding state of earlier steps at the
    first step tells that apart from a fresh start; a resume that loads CigL's state, a fresh
    optimizer and a fresh Adagrad (whose state exists, at step 0, from construction) step silently."""
    data = [(torch.randn(6, 8), torch.randint(0, 3, (6,))) for _ in range(4)]

    def build(kind=torch.optim.SGD, **kw):
        model = mlp()
        return model, kind(model.parameters(), lr=0.1, **kw)

    def one_step(model, opt, cigl):
        opt.zero_grad()
        F.cross_entropy(model(data[0][0]), data[0][1]).backward()
        cigl.step()

    def warned(model, opt, cigl) -> list[str]:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            one_step(model, opt, cigl)
            one_step(model, opt, cigl)
        return [str(w.message) for w in caught if "holds state from earlier steps" in str(w.message)]

    model, opt = build(momentum=0.9)
    cigl = CigL(model, opt, sparsity=0.5, total_steps=8, collect_from_epoch=1)
    train(model, opt, cigl, data, 1)
    saved = {"model": model.state_dict(), "opt": opt.state_dict(), "cigl": cigl.state_dict()}
    for load_cigl, optimizer_first in ((False, True), (False, False), (True, True)):
        model, opt = build(momentum=0.9)
        model.load_state_dict(saved["model"])
        if optimizer_first:
            opt.load_state_dict(saved["opt"])
        resumed = CigL(model, opt, sparsity=0.5, total_steps=8, collect_from_epoch=1)
        if not optimizer_first:
            opt.load_state_dict(saved["opt"])  # "build everything, then load the checkpoint"
        if load_cigl:
            resumed.load_state_dict(saved["cigl"])
        said = warned(model, opt, resumed)
        assert len(said) == (0 if load_cigl else 1)  # once, at the first step
        if said:
            assert "no cigl.load_state_dict(...) came before this first step" in said[0]
    for kind, kw in ((torch.optim.SGD, {"momentum": 0.9}), (torch.optim.Adagrad, {})):
        model, opt = build(kind, **kw)
        assert not warned(model, opt, CigL(model, opt, sparsity=0.5, total_steps=8, collect_from_epoch=1))


@pytest.mark.parametrize("method", ["static", "cigl"])
def test_sparse_training_from_dense_pretrained_weights_keeps_the_weights_outside_m_at_zero(method):
    """The same optimizer trained the model dense, then CigL starts sparse training: the momentum
    built up outside M is zeroed at the first step (with the warning), so no weight outside M moves
    off 0 and the module computes M⊙W, as final_model does."""
    data = [(torch.randn(6, 8), torch.randint(0, 3, (6,))) for _ in range(4)]
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for x, y in data:  # dense pre-training
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    cigl = CigL(model, opt, method=method, sparsity=0.5, total_steps=40, collect_from_epoch=1, delta_t=100)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train(model, opt, cigl, data, 1)
    outside = 1 - cigl.net.mask.float
    assert torch.count_nonzero(cigl.net.sparse_flat() * outside) == 0
    model.eval()
    x = torch.randn(5, 8)
    torch.testing.assert_close(model(x), cigl.final_model()(x))
