"""``predict`` and ``to_inferencedata`` over a ``torch.utils.data.DataLoader``: the loader is read
once, batch by batch, each batch predicted by every draw, and the labels its batches carry come back
in the order of the probabilities, so a shuffled loader scores correctly.  The result must equal the
prediction on the same inputs given as one tensor."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from tests.test_drop_in_trial import bn_mlp_posterior


@pytest.fixture(scope="module")
def trained():
    """(posterior of a trained CigL MLP with BatchNorm and 3 samples, held-out inputs, their labels)."""
    return bn_mlp_posterior(keep=0.8)


@pytest.mark.parametrize("predictor", ["final", "wma", "predictive", "mc-z"])
def test_a_loader_predicts_as_the_same_inputs_in_one_tensor(trained, predictor):
    post, x, y = trained
    loader = DataLoader(TensorDataset(x, y), batch_size=7)  # 40 inputs: a short last batch
    whole = post.predict(x, predictor)
    batched = post.predict(loader, predictor)
    torch.testing.assert_close(batched.probs, whole.probs)
    if whole.draws is None:
        assert batched.draws is None
    else:
        assert batched.draws.shape == whole.draws.shape
        torch.testing.assert_close(batched.draws, whole.draws)
    assert torch.equal(batched.labels, y) and whole.labels is None


def test_a_shuffled_loader_gives_its_labels_in_the_order_of_the_probabilities(trained):
    post, x, y = trained
    index = torch.arange(len(x))
    loader = DataLoader(TensorDataset(x, index), batch_size=8, shuffle=True,
                        generator=torch.Generator().manual_seed(3))
    pred = post.predict(loader, "predictive")
    order = pred.labels
    assert not torch.equal(order, index) and torch.equal(order.sort().values, index)  # shuffled, each once
    torch.testing.assert_close(pred.probs, post.predict(x[order], "predictive").probs)


def test_batches_without_integer_labels_give_no_labels(trained):
    post, x, _ = trained
    bare = DataLoader(x, batch_size=10)  # batches are the inputs alone
    soft = DataLoader(TensorDataset(x, torch.rand(len(x), 3)), batch_size=10)  # soft labels
    for loader in (bare, soft):
        pred = post.predict(loader, "wma")
        assert pred.labels is None
        torch.testing.assert_close(pred.probs, post.predict(x, "wma").probs)


def test_a_loader_of_dicts_or_of_nothing_is_refused_by_name(trained):
    post, x, y = trained
    dicts = DataLoader([{"x": a, "y": b} for a, b in zip(x, y)], batch_size=10)
    with pytest.raises(ValueError, match="batch 0 of the DataLoader is a dict \\(keys x, y\\)"):
        post.predict(dicts, "wma")
    with pytest.raises(ValueError, match="the DataLoader gave no batches"):
        post.predict(DataLoader(TensorDataset(x[:0], y[:0]), batch_size=4), "wma")


def test_to_inferencedata_takes_the_labels_of_a_loader(trained):
    post, x, y = trained
    from_tensors = post.to_inferencedata(x, y)
    from_loader = post.to_inferencedata(DataLoader(TensorDataset(x, y), batch_size=9))
    assert (from_loader.observed_data["y"].values == y.numpy()).all()
    torch.testing.assert_close(torch.from_numpy(from_loader.log_likelihood["y"].values),
                               torch.from_numpy(from_tensors.log_likelihood["y"].values))
    with pytest.raises(ValueError, match="carry no integer labels"):
        post.to_inferencedata(DataLoader(x, batch_size=9))


def test_labels_of_another_length_than_the_inputs_are_refused_and_lists_of_ints_are_labels(trained):
    post, x, y = trained
    wrong = DataLoader(list(range(4)), batch_size=2, collate_fn=lambda idx: (x[:3], y[:2]))
    with pytest.raises(ValueError, match="batch 0 of the DataLoader holds 3 inputs but 2 labels"):
        post.predict(wrong, "wma")
    as_lists = DataLoader(list(range(len(x))), batch_size=8,
                          collate_fn=lambda idx: (x[idx], [int(y[i]) for i in idx]))  # a custom collate_fn
    assert torch.equal(post.predict(as_lists, "wma").labels, y)


def test_to_inferencedata_refuses_labels_that_differ_from_the_loaders_own(trained):
    """A shuffled loader gives its labels in its own order: labels given beside it in the data set's
    order would pair each input with another's label, so they are refused; equal ones are accepted."""
    post, x, y = trained
    shuffled = DataLoader(TensorDataset(x, y), batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="the labels given differ from those the DataLoader's batches carry"):
        post.to_inferencedata(shuffled, y)
    in_order = DataLoader(TensorDataset(x, y), batch_size=8)
    assert (post.to_inferencedata(in_order, y).observed_data["y"].values == y.numpy()).all()
