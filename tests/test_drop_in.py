"""CigL as a drop-in on a user's own module, optimizer and loop (cigl_bayes.CigL, issue #40).

The trajectory test is the contract: a loop a user would write — ``model(x)``, their own loss,
``loss.backward()``, ``cigl.step()``, ``cigl.end_epoch()`` — follows exactly the trajectory of this
project's Trainer (float64, ≥ 50 steps with mask updates): same weights, same mask, same WMA.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cigl_bayes import CigL
from cigl_bayes.config import TrainConfig
from cigl_bayes.evaluate import output_state_dict
from cigl_bayes.inference.training import Trainer
from cigl_bayes.models import build_model
from cigl_bayes.train import lr_factor
from tests.test_cigl_fidelity import synthetic_data

EPOCHS, BATCH = 10, 32  # 6 steps an epoch, 60 steps; ΔT = 4: mask updates at 4, 8, ..., 44


def trainer_and_user_loop(tmp_path, method: str):
    cfg = TrainConfig(method=method, model="small-cnn", sparsity=0.8, epochs=EPOCHS, batch_size=BATCH, delta_t=4,
                      device="cpu", dtype="float64", log_every=1000, temperature_scaling=False, wma_start_epoch=6,
                      random_mask_rate=0.1 if method == "cigl" else None, val_curves=False)
    trainer = Trainer(cfg, tmp_path / "trainer", progress=False, data=synthetic_data())
    trainer.fit()
    cfg = trainer.cfg  # resolved: lr schedule, T*, weight decay

    # the user's side: their module, optimizer, scheduler and loop
    torch.manual_seed(cfg.seed)
    model = build_model("small-cnn", num_classes=10).double()
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=0.9, nesterov=True)
    data = synthetic_data()
    steps_per_epoch = len(data.train)
    total = EPOCHS * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, cfg, total))
    cigl = CigL(model, optimizer, method=method, sparsity=0.8, total_steps=total, delta_t=4,
                collect_from_epoch=cfg.wma_start_epoch, keep=cfg.keep, seed=cfg.seed)
    model.train()
    updates = 0
    for epoch in range(EPOCHS):
        for x, y in data.train.epoch(epoch):
            optimizer.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x), y) + 0.5 * cfg.weight_decay * cigl.l2()
            loss.backward()
            updates += cigl.step()
            scheduler.step()
        cigl.end_epoch()
    return trainer, cigl, model, updates


@pytest.mark.parametrize("method", ["rigl", "cigl"])
def test_a_user_loop_follows_the_trainers_trajectory(tmp_path, method):
    trainer, cigl, model, updates = trainer_and_user_loop(tmp_path, method)
    assert updates >= 5 and cigl.step_count == trainer.step == 60
    assert torch.equal(cigl.net.mask.flat, trainer.net.mask.flat)
    torch.testing.assert_close(cigl.net.sparse_flat(), trainer.net.sparse_flat(), rtol=0, atol=1e-10)
    torch.testing.assert_close(cigl.net.other_flat(), trainer.net.other_flat(), rtol=0, atol=1e-10)
    if method == "cigl":
        assert cigl.wma.count == trainer.wma.count == 4
        torch.testing.assert_close(cigl.wma.mean().sparse, trainer.wma.mean().sparse, rtol=0, atol=1e-10)
        # the averaged model is the Trainer's output model (model.pt): WMA weights, BatchNorm recomputed
        averaged = cigl.averaged_model(trainer.data.train_eval)
        expected = output_state_dict(trainer)
        for k, v in averaged.state_dict().items():
            torch.testing.assert_close(v, expected[k].to(v.dtype), rtol=0, atol=1e-10, msg=k)
        assert not averaged.training and "forward" not in vars(averaged)


def test_the_forward_pass_sees_m_z_w_in_training_and_m_w_in_eval():
    torch.manual_seed(0)
    model = build_model("small-cnn", num_classes=10).double()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    cigl = CigL(model, optimizer, method="cigl", sparsity=0.8, total_steps=100, keep=0.5, seed=3)
    x = torch.randn(4, 3, 8, 8, dtype=torch.float64)
    plain = copy.deepcopy(model)
    del plain.forward  # the module as it is: M⊙W
    model.eval()
    torch.testing.assert_close(model(x), plain.eval()(x))
    model.train()
    z = cigl.z
    masked = copy.deepcopy(plain).train()
    with torch.no_grad():
        for name, view in zip(cigl.net.sparse_names, cigl.net.mask.views(cigl.net.effective_flat(z))):
            dict(masked.named_parameters())[name].copy_(view)
    torch.testing.assert_close(model(x), masked(x))
    assert 0.3 < float(z.mean()) < 0.7
    # the state dict keys are the module's own: nothing renamed, nothing added
    assert list(model.state_dict()) == list(plain.state_dict())


class UserCNN(nn.Module):
    """A network this project has never seen."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                                  nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        return self.head(self.body(x))


def test_adamw_trains_a_user_model_and_its_moments_restart_at_zero_for_regrown_weights():
    torch.manual_seed(0)
    model = UserCNN()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-2)
    cigl = CigL(model, optimizer, method="cigl", sparsity=0.9, total_steps=40, delta_t=5, collect_from_epoch=1,
                seed=1)
    assert cigl.net.sparse_names == ["body.0.weight", "body.3.weight", "head.weight"]
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 3, 8, 8, generator=g), torch.randint(0, 10, (64,), generator=g)
    checked = 0
    for step in range(40):
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        before = cigl.net.mask.flat.clone()
        updated = cigl.step()
        if updated and not torch.equal(before, cigl.net.mask.flat):
            new = cigl.net.mask.flat & ~before
            for name, p, w_new, m in zip(cigl.net.sparse_names, cigl.net.sparse_params,
                                        cigl.net.mask.flat_views(new), cigl.net.mask.flat_views()):
                state = optimizer.state[p]
                for key in ("exp_avg", "exp_avg_sq"):
                    flat = state[key].reshape(-1)
                    assert torch.all(flat[w_new] == 0), f"{key} of regrown {name}"
                    assert torch.all(flat[~m] == 0), f"{key} outside M, {name}"
                assert torch.all(p.detach().reshape(-1)[w_new] == 0)
            checked += 1
        if step % 10 == 9:
            cigl.end_epoch()
    assert checked >= 2
    # exact sparsity after training: only M's entries are non-zero, and M holds the target
    w = cigl.net.sparse_flat().detach()
    assert torch.all(w[~cigl.net.mask.flat] == 0)
    assert abs(1 - cigl.net.mask.density - 0.9) < 0.01
    assert cigl.wma.count == 3 and len(cigl.samples) == 3


def test_state_dict_resumes_bit_identically():
    def build():
        torch.manual_seed(0)
        model = UserCNN().double()
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
        return model, opt, CigL(model, opt, method="cigl", sparsity=0.8, total_steps=30, delta_t=3,
                                collect_from_epoch=1, keep=0.8, seed=5)

    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(16, 3, 8, 8, generator=g, dtype=torch.float64), torch.randint(0, 10, (16,), generator=g))
               for _ in range(30)]

    def train(model, opt, cigl, steps):
        for i in steps:
            opt.zero_grad()
            F.cross_entropy(model(batches[i][0]), batches[i][1]).backward()
            cigl.step()
            if i % 10 == 9:
                cigl.end_epoch()

    model, opt, cigl = build()
    train(model, opt, cigl, range(30))
    model2, opt2, cigl2 = build()
    train(model2, opt2, cigl2, range(15))
    saved = copy.deepcopy({"model": model2.state_dict(), "opt": opt2.state_dict(), "cigl": cigl2.state_dict()})
    model3, opt3, cigl3 = build()
    model3.load_state_dict(saved["model"])
    opt3.load_state_dict(saved["opt"])
    cigl3.load_state_dict(saved["cigl"])
    train(model3, opt3, cigl3, range(15, 30))
    assert torch.equal(cigl3.net.sparse_flat(), cigl.net.sparse_flat())
    assert torch.equal(cigl3.net.mask.flat, cigl.net.mask.flat)
    assert torch.equal(cigl3.wma.mean().sparse, cigl.wma.mean().sparse)
    assert len(cigl3.samples) == len(cigl.samples) == 2  # epochs 1 and 2 of 0–2


def test_bad_construction_is_one_clear_error():
    model = UserCNN()
    opt = torch.optim.SGD(model.head.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="optimizer does not hold the sparse weight 'body.0.weight'"):
        CigL(model, opt, total_steps=10)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="no such parameter"):
        CigL(model, opt, total_steps=10, sparse_params=["body.9.weight"])
    with pytest.raises(ValueError, match="unknown method"):
        CigL(model, opt, total_steps=10, method="lottery")
    with pytest.raises(ValueError, match="total_steps"):
        CigL(model, opt, total_steps=0)
    cigl = CigL(model, opt, total_steps=10)
    with pytest.raises(ValueError, match="already has an instance forward"):
        CigL(model, opt, total_steps=10)
    with pytest.raises(RuntimeError, match="no samples collected"):
        cigl.averaged_model([])
    assert cigl.detach() is model and "forward" not in vars(model)


def test_the_objects_posterior_predicts_as_a_run_folder_does(tmp_path):
    """posterior(cigl, bn_loader) and load_run share one implementation: the same trained weights
    give the same predictions with every predictor (the Trainer's run folder against the user
    loop's object, which follow the same trajectory)."""
    from cigl_bayes.evaluate import evaluate_and_write
    from cigl_bayes.inference import load_run, posterior

    trainer, cigl, _, _ = trainer_and_user_loop(tmp_path, "cigl")
    evaluate_and_write(trainer)
    run = load_run(tmp_path / "trainer")
    run._data = trainer.data  # the synthetic data the run was trained on
    post = posterior(cigl, trainer.data.train_eval, mc_samples=3)
    x = trainer.data.test.x
    for predictor in ("final", "wma", "predictive", "mc-z", "swag"):
        draws = 3 if predictor in ("mc-z", "swag") else None
        mine = post.predict(x, predictor, draws=draws, seed=7)
        theirs = torch.stack([lp.exp() for lp in run.log_probs(predictor, "test", draws=draws, seed=7)]).mean(0)
        torch.testing.assert_close(mine.probs.to(theirs.dtype), theirs, rtol=1e-5, atol=1e-6, msg=predictor)
    assert len(post.samples) == 4 and post.to_inferencedata().posterior.sizes["draw"] == 4
    assert post.swag(rank=2).rank == 2
    # predicting left the object's own network as it was
    torch.testing.assert_close(cigl.net.sparse_flat(), trainer.net.sparse_flat(), rtol=0, atol=1e-10)
    with pytest.raises(ValueError, match="float tensors"):
        post.predict(torch.zeros(2, 3, 8, 8, dtype=torch.uint8), "final")
