"""The last-layer Laplace baseline (inference/laplace.py): fitted on training data, its prior
precision chosen on the validation split, the test split only scored."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("laplace")

from cigl_bayes.inference import laplace as laplace_module  # noqa: E402
from tests.test_bn_protocols import make_trainer  # noqa: E402


def test_laplace_fits_on_training_data_and_tunes_on_validation_only(tmp_path, monkeypatch):
    trainer = make_trainer(tmp_path, method="rigl")
    trainer.fit()
    served = []  # every loader laplace-torch reads, in order
    original = laplace_module.LoaderView.__iter__

    def spy(self):
        served.append(self.loader)
        return original(self)

    monkeypatch.setattr(laplace_module.LoaderView, "__iter__", spy)
    data = trainer.data
    before = {k: v.clone() for k, v in trainer.net.module.state_dict().items()}
    result = laplace_module.last_layer_laplace(trainer.net.module, data.train_eval,
                                               {"test": data.test, "val": data.val})
    assert served[0] is data.train_eval  # the Hessian: training images
    assert any(s is data.val for s in served[1:])  # the prior precision: the validation split
    assert all(s is data.train_eval or s is data.val for s in served)  # never the test split
    assert set(result.log_probs) == {"test", "val"}
    probs = result.log_probs["test"].exp()
    torch.testing.assert_close(probs.sum(-1), torch.ones(len(probs)), rtol=1e-5, atol=1e-5)
    assert 1e-4 * (1 - 1e-6) <= result.prior_precision <= 1e4 * (1 + 1e-6)  # the grid 10^[-4, 4], float32
    for k, v in trainer.net.module.state_dict().items():  # the trained network itself is left alone
        assert torch.equal(v, before[k])


def test_laplace_needs_a_validation_split(tmp_path):
    trainer = make_trainer(tmp_path, method="rigl")
    with pytest.raises(ValueError, match="validation split"):
        laplace_module.last_layer_laplace(trainer.net.module, trainer.data.train_eval, {"test": trainer.data.test})
