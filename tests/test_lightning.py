"""CigL through the Lightning callback: a LightningModule trained by ``Trainer(callbacks=[CigLCallback])``."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

L = pytest.importorskip("lightning")

from cigl_bayes import CigL  # noqa: E402
from cigl_bayes.lightning import CigLCallback  # noqa: E402
from tests.test_drop_in import UserCNN  # noqa: E402


class LitCNN(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = UserCNN()
        self.seen_sparse_weights = []

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, _):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9, nesterov=True)


def loader(seed=0, n=96):
    g = torch.Generator().manual_seed(seed)
    ds = torch.utils.data.TensorDataset(torch.randn(n, 3, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g))
    return torch.utils.data.DataLoader(ds, batch_size=16)


def test_the_callback_trains_a_lightning_module_with_cigl(tmp_path):
    torch.manual_seed(0)
    model = LitCNN()
    callback = CigLCallback(method="cigl", sparsity=0.9, delta_t=4, seed=1)
    trainer = L.Trainer(max_epochs=5, callbacks=[callback], accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    start = None

    class Spy(L.Callback):
        def on_train_start(self, tr, pl_module):
            nonlocal start
            start = callback.cigl.net.mask.flat.clone()

    trainer.callbacks.append(Spy())
    trainer.fit(model, loader())
    cigl = callback.cigl
    assert cigl.step_count == 30 and cigl.total_steps == 30  # 6 batches × 5 epochs
    assert not torch.equal(start, cigl.net.mask.flat)  # mask updates ran (every 4 steps until step 22)
    w = cigl.net.sparse_flat().detach()
    assert torch.all(w[~cigl.net.mask.flat] == 0) and abs(1 - cigl.net.mask.density - 0.9) < 0.01
    assert cigl.epoch == 5 and cigl.wma.count == 1  # T* = int(0.8 × 5) = 4: the end of epoch 5
    averaged = cigl.averaged_model(loader(1))
    assert averaged(torch.randn(2, 3, 8, 8)).shape == (2, 10)
    assert "step" not in vars(trainer.optimizers[0])  # the optimizer's own step is back
    assert set(callback.state_dict()) >= {"mask", "wma", "z_source", "step"}


def test_a_lightning_checkpoint_resumes_with_its_own_weights_and_mask(tmp_path):
    """Lightning restores the weights before the callback builds CigL: they must keep the saved
    values (not be masked by a fresh initial M), and the saved mask comes back."""
    def trainer(epochs, *callbacks):
        return L.Trainer(max_epochs=epochs, callbacks=list(callbacks), accelerator="cpu", logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         default_root_dir=tmp_path)

    torch.manual_seed(0)
    first = CigLCallback(method="cigl", sparsity=0.9, delta_t=4, seed=1)
    t1 = trainer(2, first)
    t1.fit(LitCNN(), loader())
    ckpt = tmp_path / "two-epochs.ckpt"
    t1.save_checkpoint(ckpt)
    saved_mask = first.cigl.net.mask.flat.clone()
    saved_weights = {n: p.detach().clone() for n, p in first.cigl.net.module.named_parameters()}
    assert "forward" not in vars(first.cigl.net.module)  # detached at the end of fit

    second = CigLCallback(method="cigl", sparsity=0.9, delta_t=4, seed=1)
    seen = {}

    class Spy(L.Callback):
        def on_train_start(self, tr, pl_module):
            seen["mask"] = second.cigl.net.mask.flat.clone()
            seen["weights"] = {n: p.detach().clone() for n, p in second.cigl.net.module.named_parameters()}

    torch.manual_seed(5)  # another initial model: everything must come from the checkpoint
    trainer(4, second, Spy()).fit(LitCNN(), loader(), ckpt_path=ckpt)
    assert torch.equal(seen["mask"], saved_mask)
    for name, value in saved_weights.items():
        assert torch.equal(seen["weights"][name], value), name
    assert second.cigl.step_count == 24 and second.cigl.epoch == 4


def _states_equal(a, b, where="state") -> None:
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _states_equal(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _states_equal(x, y, f"{where}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    else:
        assert a == b, where


def test_a_resumed_fit_ends_exactly_where_an_uninterrupted_one_does(tmp_path):
    """Stopped after epoch 2 of 4 and resumed from its checkpoint, a fit ends with the weights, M, the
    Z stream, the WMA mean and its samples of one run straight through: the whole CigL state resumes."""
    def trainer(*callbacks):
        return L.Trainer(max_epochs=4, callbacks=list(callbacks), accelerator="cpu", logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         default_root_dir=tmp_path)

    class StopAfterTwo(L.Callback):
        def on_train_epoch_end(self, tr, pl_module):
            if tr.current_epoch == 1:
                tr.should_stop = True

    options = dict(method="cigl", sparsity=0.9, delta_t=4, seed=1, collect_from_epoch=1)
    torch.manual_seed(0)
    straight = CigLCallback(**options)
    whole = LitCNN()
    trainer(straight).fit(whole, loader())

    torch.manual_seed(0)
    first = CigLCallback(**options)
    t1 = trainer(first, StopAfterTwo())
    t1.fit(LitCNN(), loader())
    assert first.cigl.epoch == 2
    t1.save_checkpoint(tmp_path / "half.ckpt")
    torch.manual_seed(5)  # another initial model: everything must come from the checkpoint
    second = CigLCallback(**options)
    resumed = LitCNN()
    trainer(second).fit(resumed, loader(), ckpt_path=tmp_path / "half.ckpt")
    assert second.cigl.epoch == 4 and second.cigl.wma.count == straight.cigl.wma.count == 3
    _states_equal(second.cigl.state_dict(), straight.cigl.state_dict())
    _states_equal(resumed.state_dict(), whole.state_dict(), "module")


def test_a_refused_lightning_resume_leaves_the_checkpoint_weights_untouched(tmp_path):
    """A checkpoint of another sparsity is refused by name, and the module keeps the weights Lightning
    restored: the callback never masks them with a fresh M before the saved state is checked."""
    def trainer(epochs, *callbacks):
        return L.Trainer(max_epochs=epochs, callbacks=list(callbacks), accelerator="cpu", logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         default_root_dir=tmp_path)

    torch.manual_seed(0)
    t1 = trainer(1, CigLCallback(method="cigl", sparsity=0.9, delta_t=4, seed=1))
    trained = LitCNN()
    t1.fit(trained, loader())
    t1.save_checkpoint(tmp_path / "s09.ckpt")
    saved = {name: value.clone() for name, value in trained.state_dict().items()}  # what the checkpoint holds
    module = LitCNN()
    with pytest.raises(ValueError, match="sparsity|non-zeros|nnz"):
        # sparser than the checkpoint: a fresh initial M would zero some of its non-zero weights
        trainer(2, CigLCallback(method="cigl", sparsity=0.99, delta_t=4, seed=1)).fit(
            module, loader(), ckpt_path=tmp_path / "s09.ckpt")
    for name, value in module.state_dict().items():
        assert torch.equal(value, saved[name]), name


class LitCNNWithScheduler(LitCNN):
    def configure_optimizers(self):
        optimizer = torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)
        return {"optimizer": optimizer, "lr_scheduler": torch.optim.lr_scheduler.StepLR(optimizer, step_size=1)}


def test_an_lr_scheduler_beside_the_callback_raises_no_warning(tmp_path, recwarn):
    """The callback replaces optimizer.step after the scheduler wrapped it; the scheduler must
    not take that for a user overriding the step (torch's "has been overridden" warning)."""
    torch.manual_seed(0)
    callback = CigLCallback(method="cigl", sparsity=0.9, delta_t=4, seed=1)
    trainer = L.Trainer(max_epochs=2, callbacks=[callback], accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(LitCNNWithScheduler(), loader())
    assert callback.cigl.step_count == 12
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.05 * 0.1 ** 2)  # the scheduler stepped
    messages = [str(w.message) for w in recwarn]
    assert not [m for m in messages if "overridden" in m or "before `optimizer.step()`" in m], messages


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"sparsity": 1.5}, ValueError, "sparsity"),
    ({"keep": 0}, ValueError, "keep probability must be in"),
    ({"method": "rigl2"}, ValueError, "unknown method 'rigl2'"),
    ({"delta_t": 0}, ValueError, "delta_t must be a positive integer"),
    ({"collect_from_epoch": -1}, ValueError, "collect_from_epoch must be an integer"),
    ({"sparsty": 0.9}, TypeError, "unknown option 'sparsty'"),
])
def test_the_callback_checks_its_options_when_built(kwargs, error, match):
    """As CigL(...) does, not at trainer.fit (the trial of 2026-12-06)."""
    with pytest.raises(error, match=match):
        CigLCallback(**kwargs)
    CigLCallback(method="cigl", sparsity=0.9, keep=0.95, delta_t=4, seed=1)  # the same, well formed


def test_gradient_accumulation_trains_as_a_user_loop_of_micro_batches(tmp_path):
    """accumulate_grad_batches=2: each step is two micro-batches under one Z, the loss of each
    divided by 2 (Lightning's), mask updates scored on both: the same run as a plain loop."""
    options = dict(method="cigl", sparsity=0.9, delta_t=2, seed=1, collect_from_epoch=1, keep=0.8)
    torch.manual_seed(0)
    lit = LitCNN()
    callback = CigLCallback(**options)
    L.Trainer(max_epochs=2, callbacks=[callback], accelerator="cpu", logger=False, enable_checkpointing=False,
              enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
              accumulate_grad_batches=2).fit(lit, loader())
    assert callback.cigl.step_count == 6 and callback.cigl.total_steps == 6  # 6 batches / 2 × 2 epochs

    torch.manual_seed(0)
    mine = LitCNN()
    opt = mine.configure_optimizers()
    cigl = CigL(mine, opt, total_steps=6, **options)
    batches = list(loader())
    mine.train()
    for _ in range(2):
        for first in range(0, 6, 2):
            opt.zero_grad()
            for x, y in batches[first:first + 2]:
                (F.cross_entropy(mine(x), y) / 2).backward()
            cigl.step()
        cigl.end_epoch()
    assert torch.equal(callback.cigl.net.mask.flat, cigl.net.mask.flat)
    _states_equal(callback.cigl.state_dict(), cigl.state_dict())
    _states_equal(lit.state_dict(), mine.state_dict(), "module")


def _quiet_trainer(tmp_path, callback, **limits):
    return L.Trainer(callbacks=[callback], accelerator="cpu", logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path, **limits)


def test_a_run_limited_by_max_steps_gets_the_default_t_star_from_its_epochs(tmp_path):
    """max_steps=30 (max_epochs −1) at 6 batches an epoch: 5 epochs, T* = 4, one sample — as with
    max_epochs=5 (the trial of 2026-12-06 found T* = 0: a sample every epoch, masks changing)."""
    torch.manual_seed(0)
    callback = CigLCallback(method="cigl", sparsity=0.9, delta_t=4, seed=1)
    _quiet_trainer(tmp_path, callback, max_steps=30, max_epochs=-1).fit(LitCNN(), loader())
    assert callback.cigl.step_count == 30 and callback.cigl.collect_from_epoch == 4
    assert callback.cigl.wma.count == 1


def test_a_t_star_beyond_the_last_epoch_is_refused_when_fit_starts(tmp_path):
    callback = CigLCallback(method="cigl", sparsity=0.9, collect_from_epoch=5)
    model = LitCNN()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with pytest.raises(ValueError, match=r"collect_from_epoch \(T\*\) = 5 but max_epochs = 3"):
        _quiet_trainer(tmp_path, callback, max_epochs=3).fit(model, loader())
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())  # nothing trained or masked


def test_a_second_fit_with_the_same_callback_is_refused_and_keeps_the_trained_run(tmp_path):
    """A second fit would build a fresh CigL: a new initial M over the trained weights, no samples."""
    torch.manual_seed(0)
    callback = CigLCallback(method="cigl", sparsity=0.9, delta_t=4, seed=1, collect_from_epoch=1)
    model = LitCNN()
    _quiet_trainer(tmp_path, callback, max_epochs=2).fit(model, loader())
    trained, mask = callback.cigl, callback.cigl.net.mask.flat.clone()
    weights = {n: p.detach().clone() for n, p in model.named_parameters()}
    with pytest.raises(RuntimeError, match="already trained a run"):
        _quiet_trainer(tmp_path, callback, max_epochs=4).fit(model, loader())
    assert callback.cigl is trained and torch.equal(trained.net.mask.flat, mask) and trained.wma.count == 1
    assert all(torch.equal(p, weights[n]) for n, p in model.named_parameters())
