"""The ImageNet path on a tiny ImageFolder the test writes (JPEG and PNG, odd sizes, 3 classes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from cigl_bayes import imagenet
from cigl_bayes.data import DataNotFoundError
from tests.conftest import REPO

CLASSES = ("n01", "n02", "n03")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    for split, per_class in (("train", 8), ("val", 3)):
        for c, name in enumerate(CLASSES):
            (root / "imagenet" / split / name).mkdir(parents=True)
            for i in range(per_class):
                h, w = int(rng.integers(40, 90)), int(rng.integers(40, 90))
                pixels = np.clip(rng.normal(60 + 60 * c, 30, (h, w, 3)), 0, 255).astype(np.uint8)
                ext = "png" if i % 4 == 3 else "JPEG"
                Image.fromarray(pixels).save(root / "imagenet" / split / name / f"img{i}.{ext}")
    return root


def test_index_and_missing_layout(folder, tmp_path):
    root = imagenet.find_imagenet(folder)
    train = imagenet.index_folder(root / "train")
    assert train.classes == list(CLASSES) and len(train) == 24 and np.bincount(train.labels).tolist() == [8, 8, 8]
    with pytest.raises(DataNotFoundError, match="train,val"):
        imagenet.find_imagenet(tmp_path)


def test_crop_params_stay_inside_the_image():
    rng = np.random.default_rng(1)
    for _ in range(500):
        h, w = int(rng.integers(1, 400)), int(rng.integers(1, 400))
        top, left, ch, cw = imagenet.random_resized_crop_params(h, w, rng)
        assert 0 <= top and 0 <= left and 0 < ch and 0 < cw and top + ch <= h and left + cw <= w


@pytest.mark.parametrize("train", [True, False])
def test_worker_decoding_equals_batch_decoding(folder, train):
    """The GPU path (bytes → decode_jpeg on a device → same transforms), run here with device cpu."""
    index = imagenet.index_folder(imagenet.find_imagenet(folder) / "train")
    jpegs = index.subset(np.array([i for i, f in enumerate(index.files) if f.endswith(".JPEG")]))
    common = {"batch_size": 5, "device": "cpu", "train": train, "shuffle": train, "seed": 3, "num_workers": 0}
    a = list(imagenet.ImageNetLoader(jpegs, decode_on="workers", **common).epoch(2))
    b = list(imagenet.ImageNetLoader(jpegs, decode_on="cpu", **common).epoch(2))
    assert len(a) == len(b) == 4
    for (xa, ya), (xb, yb) in zip(a, b):
        assert xa.shape[1:] == (3, 224, 224) and torch.equal(ya, yb)
        torch.testing.assert_close(xa, xb)
    again = list(imagenet.ImageNetLoader(jpegs, decode_on="workers", **common).epoch(2))
    assert all(torch.equal(x, y) for (x, _), (y, _) in zip(a, again))  # seeded by (seed, epoch, index)


def test_a_subset_larger_than_the_training_split_is_refused(folder):
    """--subset is never clipped silently: ImageNet's split names its count as CIFAR's does."""
    from cigl_bayes.config import TrainConfig
    from cigl_bayes.train import build_data

    cfg = TrainConfig(dataset="imagenet", data_dir=str(folder), subset=1000, device="cpu")
    with pytest.raises(ValueError, match="--subset 1000 is more than the 2[0-9] training images available"):
        build_data(cfg, torch.device("cpu"))


@pytest.mark.slow
def test_imagenet_end_to_end_through_the_cli(folder, tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "MPLBACKEND": "Agg", "CIGL_DATA_DIR": str(folder)}
    proc = subprocess.run([sys.executable, "-m", "experiments.train", "--dataset", "imagenet", "--method", "cigl",
                           "--epochs", "1", "--batch-size", "6", "--bn-batches", "1", "--device", "cpu",
                           "--no-progress", "--out", str(out)], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=900, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-3000:]
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model"] == "resnet50-imagenet" and cfg["dataset"] == "imagenet"  # the ImageNet default model
    result = json.loads((out / "metrics.json").read_text())
    assert result["n_test"] == 9 and set(result["test"]) >= {"final", "wma"}
    assert result["sparsity_actual"] >= 0.94
