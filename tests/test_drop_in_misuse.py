"""The drop-in CigL object under the mistakes a user plausibly makes (the new-user trial of
2026-12-05): each is either made to work as the user meant or refused with one clear error,
never a silently wrong run."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cigl_bayes import CigL
from tests.test_drop_in import UserCNN


def batches(n=12, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(16, 3, 8, 8, generator=g, dtype=torch.float64), torch.randint(0, 10, (16,), generator=g))
            for _ in range(n)]


def build(opt_name="sgd", **kwargs):
    torch.manual_seed(0)
    model = UserCNN().double()
    if opt_name == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=5e-4)
    args = {"method": "cigl", "sparsity": 0.8, "total_steps": 24, "delta_t": 3, "collect_from_epoch": 1,
            "keep": 0.8, "seed": 5, **kwargs}
    return model, opt, CigL(model, opt, **args)


def train(model, opt, cigl, data, steps):
    for i in steps:
        opt.zero_grad()
        F.cross_entropy(model(data[i][0]), data[i][1]).backward()
        cigl.step()
        if i % 6 == 5:
            cigl.end_epoch()


def test_a_step_without_the_attached_forward_is_refused_before_anything_moves():
    model, opt, cigl = build()
    x, y = batches(1)[0]
    before = [p.detach().clone() for p in model.parameters()]
    opt.zero_grad()
    F.cross_entropy(model.head(model.body(x)), y).backward()  # the user's loop skips model.forward
    with pytest.raises(RuntimeError, match="without a training forward pass"):
        cigl.step()
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before))
    assert cigl.net.mask.density == pytest.approx(0.2, abs=0.01)


@pytest.mark.parametrize("opt_name", ["sgd", "adamw"])
def test_resuming_in_the_usual_pytorch_order_is_exact(opt_name):
    """module.load_state_dict, optimizer.load_state_dict, CigL(...), cigl.load_state_dict: the
    order a PyTorch user writes. Construction zeroes the weights outside a fresh initial M; the
    load puts them back before applying the saved M."""
    data = batches(24)
    model, opt, cigl = build(opt_name)
    train(model, opt, cigl, data, range(24))
    model2, opt2, cigl2 = build(opt_name)
    train(model2, opt2, cigl2, data, range(11))
    saved = copy.deepcopy({"model": model2.state_dict(), "opt": opt2.state_dict(), "cigl": cigl2.state_dict()})

    torch.manual_seed(123)  # another initialisation: the saved weights must win
    model3 = UserCNN().double()
    model3.load_state_dict(saved["model"])
    opt3 = (torch.optim.SGD(model3.parameters(), lr=0.05, momentum=0.9, nesterov=True) if opt_name == "sgd"
            else torch.optim.AdamW(model3.parameters(), lr=1e-2, weight_decay=5e-4))
    opt3.load_state_dict(saved["opt"])
    cigl3 = CigL(model3, opt3, method="cigl", sparsity=0.8, total_steps=24, delta_t=3, collect_from_epoch=1,
                 keep=0.8, seed=99)  # its own initial M zeroes some of the saved weights
    cigl3.load_state_dict(saved["cigl"])
    for k, v in model3.state_dict().items():
        assert torch.equal(v, saved["model"][k]), k
    train(model3, opt3, cigl3, data, range(11, 24))
    assert torch.equal(cigl3.net.mask.flat, cigl.net.mask.flat)
    assert torch.equal(cigl3.net.sparse_flat(), cigl.net.sparse_flat())
    assert torch.equal(cigl3.wma.mean().sparse, cigl.wma.mean().sparse)


def test_a_fresh_module_loaded_with_a_saved_mask_keeps_its_weights_inside_that_mask():
    """Loading a state into a never-trained CigL (its module untouched since construction) puts
    back the weights construction zeroed: the loaded M selects them, as if built with that M."""
    model, opt, cigl = build()
    train(model, opt, cigl, batches(12), range(12))
    state = cigl.state_dict()
    torch.manual_seed(0)
    fresh = UserCNN().double()
    dense = {k: v.clone() for k, v in fresh.state_dict().items()}
    cigl2 = CigL(fresh, torch.optim.SGD(fresh.parameters(), lr=0.1), sparsity=0.8, total_steps=24, keep=0.8, seed=7,
                 delta_t=3, collect_from_epoch=1)  # the run's settings, another seed (another initial M)
    cigl2.load_state_dict(state)
    for name, w, m in zip(cigl2.net.sparse_names, cigl2.net.sparse_params, cigl2.net.mask.views(cigl2.net.mask.float)):
        assert torch.equal(w, dense[name] * m), name


def test_state_dict_is_a_copy_both_ways():
    data = batches(24)
    model, opt, cigl = build()
    train(model, opt, cigl, data, range(12))  # two epochs: one WMA sample (T* = 1)
    state = cigl.state_dict()
    frozen = copy.deepcopy(state)
    train(model, opt, cigl, data, range(12, 24))  # training on does not change the state taken
    model2, opt2, cigl2 = build()
    cigl2.load_state_dict(state)
    train(model2, opt2, cigl2, data, range(12, 24))  # nor does training the object it was loaded into
    for key in ("mask", "wma"):
        for k, v in frozen[key].items():
            if torch.is_tensor(v):
                assert torch.equal(state[key][k], v), (key, k)
    assert state["samples"] and all(torch.equal(a[k], b[k]) for a, b in zip(state["samples"], frozen["samples"])
                                    for k in ("support", "values", "other"))


def test_keep_and_sparsity_are_checked_for_every_method():
    model = UserCNN()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    def make(**kw):
        cigl = CigL(model, opt, total_steps=10, **kw)
        cigl.detach()
        return cigl

    with pytest.raises(ValueError, match="keep probability must be in"):
        make(method="rigl", keep=0.0)
    with pytest.raises(ValueError, match="has no random mask Z"):
        make(method="rigl", keep=0.5)
    assert make(method="rigl", keep=1.0).keep == 1.0
    with pytest.raises(ValueError, match="keep probability must be in"):
        make(method="cigl", keep=True)
    with pytest.raises(ValueError, match="trains every weight"):
        make(method="dense", sparsity=0.9)
    dense = make(method="dense")
    assert dense.sparsity == 0.0 and dense.net.mask.density == 1.0
    assert make(method="rigl").sparsity == 0.95


def test_rigl_mcdp_needs_dropout_layers_in_the_users_module():
    model = UserCNN()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="has none: add nn.Dropout"):
        CigL(model, opt, method="rigl-mcdp", total_steps=10)
    model.head = nn.Sequential(nn.Dropout(0.1), nn.Linear(32, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    assert CigL(model, opt, method="rigl-mcdp", total_steps=10).method.activation_dropout


def test_a_state_of_another_sparsity_or_no_state_is_refused():
    model, opt, cigl = build()
    train(model, opt, cigl, batches(6), range(6))
    state = cigl.state_dict()
    torch.manual_seed(0)
    other = UserCNN().double()
    cigl_half = CigL(other, torch.optim.SGD(other.parameters(), lr=0.1), sparsity=0.5, total_steps=24, keep=0.8)
    with pytest.raises(ValueError, match="sparsity 0.8 in the state, 0.5 here"):
        cigl_half.load_state_dict(state)
    legacy = {k: v for k, v in state.items() if k != "settings"}  # saved before settings were recorded
    with pytest.raises(ValueError, match="build it with the checkpoint's sparsity"):
        cigl_half.load_state_dict(legacy)
    with pytest.raises(ValueError, match="not a CigL state_dict: it has no 'epoch'"):
        cigl_half.load_state_dict({})


def test_plausible_argument_mistakes_are_one_clear_error():
    model = UserCNN()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="first argument must be an nn.Module, got SGD"):
        CigL(opt, model, total_steps=10)
    with pytest.raises(ValueError, match="second argument must be a torch optimizer, got NoneType"):
        CigL(model, None, total_steps=10)
    with pytest.raises(ValueError, match="delta_t must be a positive integer, got 2.5"):
        CigL(model, opt, total_steps=10, delta_t=2.5)
    with pytest.raises(ValueError, match="a list of parameter names, got the string"):
        CigL(model, opt, total_steps=10, sparse_params="head.weight")
    with pytest.raises(ValueError, match="sparse_params is empty"):
        CigL(model, opt, total_steps=10, sparse_params=[])
    bare = nn.Module()
    bare.scale = nn.Parameter(torch.ones(3))
    with pytest.raises(ValueError, match="no conv or linear weights to sparsify"):
        CigL(bare, torch.optim.SGD(bare.parameters(), lr=0.1), total_steps=10)
    cigl = CigL(model, opt, total_steps=np.int64(100))  # a numpy integer is an integer
    assert cigl.total_steps == 100 and type(cigl.total_steps) is int
    model2 = UserCNN()
    cigl = CigL(model2, torch.optim.SGD(model2.parameters(), lr=0.1), total_steps=10, sparsity=np.float32(0.9),
                keep=np.float32(0.95))  # numpy floats of any width are numbers
    assert type(cigl.sparsity) is float and cigl.keep == pytest.approx(0.95)
    with pytest.raises(ValueError, match="sparsity must be in"):
        CigL(UserCNN(), opt, total_steps=10, sparsity=False)


def test_averaging_a_model_without_batchnorm_needs_no_loader_and_an_empty_loader_is_refused():
    mlp, opt, cigl = trained_mlp()
    averaged = cigl.averaged_model()  # no BatchNorm: nothing to recompute
    torch.testing.assert_close(torch.cat([p.flatten() for n, p in averaged.named_parameters() if "weight" in n]),
                               cigl.wma.mean().sparse)

    model, opt, cigl = build()
    train(model, opt, cigl, batches(12), range(12))
    with pytest.raises(ValueError, match="yielded no batch"):
        cigl.averaged_model([])
    images_only = [x for x, _ in batches(3)]  # a loader of images, without labels
    with_labels = batches(3)
    a, b = cigl.averaged_model(images_only), cigl.averaged_model(with_labels)
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k
    with pytest.raises(ValueError, match="must yield image tensors or"):
        cigl.averaged_model([{"x": x} for x, _ in batches(2)])


# --------------------------------------------------------------------------------------------------
# The second new-user trial (2026-12-06)
# --------------------------------------------------------------------------------------------------


def test_a_deep_copy_of_the_trained_module_is_a_plain_independent_module():
    """copy.deepcopy (and AveragedModel, which deep-copies) of a module CigL trains: the copy
    computes with its own weights, its gradients land on its own parameters, never the original's."""
    model, opt, cigl = build()
    data = batches(3)
    train(model, opt, cigl, data, range(2))
    opt.zero_grad()
    snap = copy.deepcopy(model).train()
    x, y = data[2]
    F.cross_entropy(snap(x), y).backward()
    assert all(p.grad is None or not p.grad.any() for p in model.parameters())  # the original untouched
    assert snap.body[3].weight.grad is not None and snap.body[3].weight.grad.abs().sum() > 0
    with torch.no_grad():  # a plain module: its own forward on its own weights, in train mode too
        plain = copy.deepcopy(snap)
        del plain.forward
        torch.testing.assert_close(snap(x), plain(x))
        snap.body[3].weight.mul_(2.0)
        assert not torch.allclose(snap(x), plain(x))
    from torch.optim.swa_utils import AveragedModel

    averaged = AveragedModel(model)  # the SWA utility a user reaches for
    averaged.train()
    F.cross_entropy(averaged(x), y).backward()
    assert all(p.grad is None or not p.grad.any() for p in model.parameters())
    # CigL trains on as before, and a new CigL can be built on the copy
    opt.zero_grad()
    train(model, opt, cigl, data, [2])
    CigL(snap, torch.optim.SGD(snap.parameters(), lr=0.1), sparsity=0.8, total_steps=4)


def test_a_step_after_detach_is_refused_until_attach():
    model, opt, cigl = build()
    data = batches(2)
    cigl.detach()
    before = [p.detach().clone() for p in model.parameters()]
    opt.zero_grad()
    F.cross_entropy(model(data[0][0]), data[0][1]).backward()
    with pytest.raises(RuntimeError, match=r"after cigl.detach\(\)"):
        cigl.step()
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before))
    cigl.attach()
    opt.zero_grad()
    train(model, opt, cigl, data, [1])
    assert cigl.net.mask.density == pytest.approx(0.2, abs=0.01)


@pytest.mark.parametrize("changed", [{"keep": 0.9}, {"method": "rigl", "keep": None}, {"delta_t": 5},
                                     {"drop_fraction": 0.5}, {"update_end": 0.5}])
def test_a_state_saved_under_other_settings_is_refused_by_name(changed):
    model, opt, cigl = build()
    train(model, opt, cigl, batches(6), range(6))
    state = cigl.state_dict()
    model2, opt2, cigl2 = build(**changed)
    name = next(k for k in changed if k != "keep") if len(changed) > 1 else next(iter(changed))
    with pytest.raises(ValueError, match=rf"other CigL settings \(.*{name} "):
        cigl2.load_state_dict(state)
    model3, opt3, cigl3 = build()  # the same settings: accepted
    cigl3.load_state_dict(state)
    legacy = {k: v for k, v in state.items() if k != "settings"}  # saved before settings were recorded
    model4, opt4, cigl4 = build()
    cigl4.load_state_dict(legacy)
    model5, opt5, longer = build(total_steps=48, collect_from_epoch=2)  # the run extended: accepted
    longer.load_state_dict(state)
    assert longer.settings.total_steps == 48 and longer.step_count == 6


def test_another_distribution_on_resume_is_named():
    model, opt, cigl = build()
    state = cigl.state_dict()
    _, _, uniform = build(distribution="uniform")
    with pytest.raises(ValueError, match=r"distribution 'erk' in the state, 'uniform' here"):
        uniform.load_state_dict(state)
    legacy = {k: v for k, v in state.items() if k != "settings"}
    with pytest.raises(ValueError, match="same sparse_params and distribution"):
        uniform.load_state_dict(legacy)


def test_a_batchnorm_loader_of_the_wrong_kind_names_the_loader():
    model, opt, cigl = build()
    data = batches(12)
    train(model, opt, cigl, data, range(12))
    x = torch.cat([xb for xb, _ in data])
    with pytest.raises(ValueError, match=r"BatchNorm loader is one tensor \(192, 3, 8, 8\)"):
        cigl.averaged_model(x)
    with pytest.raises(ValueError, match=r"BatchNorm loader's first batch is torch.float32 \(16, 3, 8, 8\) and the "
                                         r"model's weights are torch.float64"):
        cigl.averaged_model([(xb.float(), yb) for xb, yb in data])
    with pytest.raises(RuntimeError) as err:  # any other error keeps its type (an OOM stays catchable as such)
        cigl.averaged_model([(xb[:, :2], yb) for xb, yb in data])  # two channels: the model's own error
    assert type(err.value) is RuntimeError
    with pytest.raises(ValueError, match="bn_batches=0"):
        cigl.averaged_model(data, bn_batches=0)
    good = cigl.averaged_model(data)  # a refused loader left the live module as it was
    assert good is not model


def test_seed_and_meta_parameters_are_refused_clearly():
    model = UserCNN()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="seed must be an integer, got None"):
        CigL(model, opt, total_steps=10, seed=None)
    with pytest.raises(ValueError, match="drop_fraction must be a number in"):
        CigL(model, opt, total_steps=10, drop_fraction=1.5)
    with torch.device("meta"):
        meta = UserCNN()
    with pytest.raises(ValueError, match="meta device"):
        CigL(meta, torch.optim.SGD(meta.parameters(), lr=0.1), total_steps=10)


def test_posterior_of_a_model_without_batchnorm_needs_no_loader():
    from cigl_bayes.inference import posterior

    mlp, opt, cigl = trained_mlp()
    post = posterior(cigl)
    x = batches(1, seed=7)[0][0]
    for predictor in ("final", "wma", "predictive", "mc-z"):
        assert torch.isfinite(post.predict(x, predictor).probs).all(), predictor
    torch.testing.assert_close(post.predict(x, "wma").probs.double(), torch.softmax(cigl.averaged_model()(x), -1),
                               rtol=1e-5, atol=1e-6)
    model, opt, cigl_bn = build()
    train(model, opt, cigl_bn, batches(12), range(12))
    with pytest.raises(ValueError, match=r"give posterior\(cigl, bn_loader\)"):
        posterior(cigl_bn).predict(x, "wma")
    few = CigL(*_mlp_and_opt(), sparsity=0.5, total_steps=12, delta_t=3, keep=0.9, collect_from_epoch=0)
    few.end_epoch()
    with pytest.raises(ValueError, match="SWAG needs at least 2 samples; this CigL object has 1"):
        posterior(few).swag()


def _mlp_and_opt():
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(192, 32), nn.ReLU(), nn.Linear(32, 10)).double()
    return mlp, torch.optim.SGD(mlp.parameters(), lr=0.05)


def trained_mlp():
    """A model without BatchNorm, trained 12 steps with CigL (two WMA samples)."""
    torch.manual_seed(0)
    mlp, opt = _mlp_and_opt()
    cigl = CigL(mlp, opt, sparsity=0.5, total_steps=12, delta_t=3, keep=0.9)
    train(mlp, opt, cigl, batches(12), range(12))
    return mlp, opt, cigl


class NoMemoCNN(UserCNN):
    """A module whose own __deepcopy__ does not register the copy in ``memo`` (it is allowed to)."""

    def __deepcopy__(self, memo):
        new = self.__class__.__new__(self.__class__)
        for k, v in self.__dict__.items():
            object.__setattr__(new, k, copy.deepcopy(v, memo))
        return new


def test_copies_made_by_cigl_meet_a_class_own_deepcopy_without_the_attached_forward():
    torch.manual_seed(0)
    model = NoMemoCNN().double()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    cigl = CigL(model, opt, sparsity=0.8, total_steps=12, delta_t=3, keep=0.8, seed=5)
    data = batches(12)
    train(model, opt, cigl, data, range(12))
    for made in (cigl.plain_copy(), cigl.final_model(), cigl.averaged_model(data)):
        assert "forward" not in vars(made)
    assert "forward" in vars(model)  # still attached: training goes on
    train(model, opt, cigl, data, [0])


def test_a_pickled_module_and_a_dropped_cigl_leave_nothing_that_blocks_a_new_cigl():
    import gc
    import weakref

    model, opt, cigl = build()
    train(model, opt, cigl, batches(6), range(6))
    # pickling a module stores its instance forward by name, so unpickling brings back the class's own
    # forward stored on the instance; built here directly (the project never unpickles a whole module)
    loaded = copy.deepcopy(model)
    loaded.forward = type(loaded).forward.__get__(loaded)
    CigL(loaded, torch.optim.SGD(loaded.parameters(), lr=0.1), sparsity=0.8, total_steps=4)
    snap = copy.deepcopy(model)  # a copy does not keep the original's CigL (and its samples) alive
    gone = weakref.ref(cigl)
    del cigl
    gc.collect()
    assert gone() is None
    x = batches(1)[0][0]
    torch.testing.assert_close(snap.train()(x), type(snap).forward(snap, x))
    CigL(model, opt, sparsity=0.8, total_steps=4)  # its CigL is gone: the module takes a new one


def test_a_deep_copy_of_the_cigl_object_trains_its_own_copy_exactly_as_the_original_trains_on():
    model, opt, cigl = build()
    data = batches(12)
    train(model, opt, cigl, data, range(4))
    twin = copy.deepcopy(cigl)  # module, optimizer, masks, Z stream: all copied
    assert twin.net.module is not model
    train(model, opt, cigl, data, range(4, 12))
    train(twin.net.module, twin.optimizer, twin, data, range(4, 12))
    for (name, a), b in zip(model.named_parameters(), twin.net.module.parameters()):
        assert torch.equal(a, b), name
    assert torch.equal(cigl.net.mask.flat, twin.net.mask.flat) and cigl.wma.count == twin.wma.count


@pytest.mark.parametrize("replace", ["load-assign", "new-head", "new-body", "new-batchnorm-weight"])
def test_a_parameter_replaced_after_construction_is_named_at_the_next_step(replace):
    """The optimizer and the mask hold the parameters CigL was built on; a module whose parameter was
    replaced afterwards would train nothing (before the check it did so silently).  The step is
    refused, naming the parameter, before anything moves."""
    model, opt, cigl = build()
    data = batches(3)
    train(model, opt, cigl, data, range(2))
    expected = {"load-assign": "body.0.weight", "new-head": "head.weight", "new-body": "body.0.weight",
                "new-batchnorm-weight": "body.1.weight"}[replace]
    if replace == "load-assign":
        model.load_state_dict({k: v.clone() for k, v in model.state_dict().items()}, assign=True)
    elif replace == "new-head":
        model.head = nn.Linear(32, 10).double()
    elif replace == "new-body":
        model.body = copy.deepcopy(model.body)
    else:
        model.body[1].weight = nn.Parameter(model.body[1].weight.detach().clone())
    before = [p.detach().clone() for p in model.parameters()]
    opt.zero_grad()
    F.cross_entropy(model(data[2][0]), data[2][1]).backward()
    with pytest.raises(RuntimeError, match=f"parameter '{expected}' was replaced after CigL"):
        cigl.step()
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before))


def test_parameters_loaded_in_place_after_construction_train_on():
    model, opt, cigl = build()
    data = batches(3)
    train(model, opt, cigl, data, range(1))
    model.load_state_dict({k: v.clone() for k, v in model.state_dict().items()})  # in place: the same Parameters
    model.to(memory_format=torch.channels_last)
    model.body = torch.compile(model.body, backend="eager")  # compiled in place: the same Parameters inside
    train(model, opt, cigl, data, range(1, 3))
    assert cigl.step_count == 3
