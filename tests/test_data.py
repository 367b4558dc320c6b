"""Tests for cigl_bayes.data: sources (pickle, image folder, archives), cache, splits, DeviceLoader."""

from __future__ import annotations

import os
import pickle
import tarfile
import time
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
from PIL import Image

from cigl_bayes import data as data_module
from cigl_bayes.data import (
    CIFAR10_CLASSES,
    DATASETS,
    NORMALIZATION,
    ArrayDataset,
    DataFormatError,
    DataNotFoundError,
    DeviceLoader,
    crop_flip,
    load_dataset,
    read_source,
    resolve_data_dir,
    split_validation,
    take_subset,
)

# --------------------------------------------------------------------------------------------------
# Writers of small datasets in the true on-disk formats
# --------------------------------------------------------------------------------------------------


def random_split(rng: np.random.Generator, n: int, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    images = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
    return images, np.arange(n, dtype=np.int64) % n_classes


def dump(path: Path, obj: dict) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def as_rows(images: np.ndarray) -> np.ndarray:
    """(N, 32, 32, 3) -> the pickle release's (N, 3072) row-major CHW."""
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2).reshape(len(images), -1))


def write_cifar10_pickle(folder: Path, seed: int = 0, label_offset: int = 0) -> tuple[ArrayDataset, ArrayDataset]:
    """``cifar-10-batches-py``-style folder: 5 batches of 4, a test batch of 6, batches.meta."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    xs, ys = [], []
    for i in range(1, 6):
        x, y = random_split(rng, 4, 10)
        y = (y + i + label_offset) % 10
        dump(folder / f"data_batch_{i}", {b"batch_label": b"b", b"data": as_rows(x), b"labels": y.tolist()})
        xs.append(x)
        ys.append(y)
    xt, yt = random_split(rng, 6, 10)
    dump(folder / "test_batch", {b"data": as_rows(xt), b"labels": yt.tolist()})
    names = [c.encode() for c in CIFAR10_CLASSES]
    dump(folder / "batches.meta", {b"label_names": names, b"num_cases_per_batch": 4})
    return (
        ArrayDataset(np.concatenate(xs), np.concatenate(ys), CIFAR10_CLASSES),
        ArrayDataset(xt, yt, CIFAR10_CLASSES),
    )


FINE = tuple(f"fine{i:02d}" for i in range(100))
COARSE = tuple(f"coarse{i:02d}" for i in range(20))


def write_cifar100_pickle(folder: Path) -> dict[str, np.ndarray]:
    """``cifar-100-python``-style folder: train (300), test (100), meta with fine and coarse names."""
    rng = np.random.default_rng(1)
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, n in (("train", 300), ("test", 100)):
        x, fine = random_split(rng, n, 100)
        coarse = fine // 5
        dump(folder / split, {b"data": as_rows(x), b"fine_labels": fine.tolist(), b"coarse_labels": coarse.tolist()})
        out |= {f"{split}_x": x, f"{split}_fine": fine, f"{split}_coarse": coarse}
    dump(folder / "meta", {b"fine_label_names": [n.encode() for n in FINE], b"coarse_label_names": list(COARSE)})
    return out


def write_image_folder(folder: Path, classes=CIFAR10_CLASSES, per_class=(2, 1)) -> dict[str, list]:
    """``{train,test}/<class>/NNNN.png``; returns, per split, (class, file index, image) in written order."""
    rng = np.random.default_rng(2)
    written = {"train": [], "test": []}
    for split, k in zip(("train", "test"), per_class):
        for c in classes:
            (folder / split / c).mkdir(parents=True, exist_ok=True)
            for j in range(k):
                img = rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
                Image.fromarray(img).save(folder / split / c / f"{j:04d}.png")
                written[split].append((c, j, img))
    return written


def make_tar(folder: Path, archive: Path) -> Path:
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(folder, arcname=folder.name)
    return archive


def assert_same(a: ArrayDataset, b: ArrayDataset) -> None:
    assert a.images.shape == b.images.shape and np.array_equal(a.images, b.images)
    assert np.array_equal(a.labels, b.labels)
    assert a.classes == b.classes
    assert a.images.dtype == np.uint8 and a.labels.dtype == np.int64


# --------------------------------------------------------------------------------------------------
# The real CIFAR-10 tarball: decoded once for the whole file
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real(cifar_data_dir, tmp_path_factory) -> dict:
    """Cold load (fresh cache) then warm load of the real CIFAR-10, counting how often a source is
    decoded.  How much faster the cache is belongs to ``python -m benchmarks.data_load``, not here."""
    cache = tmp_path_factory.mktemp("cold-cache")
    decodes = []

    def counted(*args, **kwargs):
        decodes.append(args)
        return read_source(*args, **kwargs)

    with mock.patch.object(data_module, "read_source", counted):
        train, test = load_dataset("cifar10", cifar_data_dir, cache_dir=cache)
        cold_decodes = len(decodes)
        train2, test2 = load_dataset("cifar10", cifar_data_dir, cache_dir=cache)
    return dict(train=train, test=test, train2=train2, test2=test2, cache=cache,
                cold_decodes=cold_decodes, warm_decodes=len(decodes) - cold_decodes)


def test_real_cifar10_sizes_and_classes(real):
    train, test = real["train"], real["test"]
    assert (len(train), len(test)) == (50_000, 10_000)
    assert train.images.shape == (50_000, 32, 32, 3) and train.images.dtype == np.uint8
    assert test.images.shape == (10_000, 32, 32, 3) and test.labels.dtype == np.int64
    assert train.classes == test.classes == CIFAR10_CLASSES
    np.testing.assert_array_equal(np.bincount(train.labels, minlength=10), [5000] * 10)
    np.testing.assert_array_equal(np.bincount(test.labels, minlength=10), [1000] * 10)


def test_real_cifar10_channel_means(real):
    mean = real["train"].images.reshape(-1, 3).mean(axis=0, dtype=np.float64) / 255.0
    np.testing.assert_allclose(mean, NORMALIZATION["cifar10"][0], atol=0.002)


def test_real_cifar10_is_decoded_once_then_served_identical_from_the_cache(real):
    assert len(list(real["cache"].glob("cifar10-fine-*.npz"))) == 1
    assert (real["cold_decodes"], real["warm_decodes"]) == (1, 0)
    assert_same(real["train"], real["train2"])
    assert_same(real["test"], real["test2"])


def test_real_cifar10_device_loader_batch(real):
    mean, std = NORMALIZATION["cifar10"]
    loader = DeviceLoader(real["test"], batch_size=4000, device="cpu", mean=mean, std=std)
    x, y = next(iter(loader))
    assert x.shape == (4000, 3, 32, 32) and y.shape == (4000,)
    assert x.mean(dim=(0, 2, 3)).abs().max() < 0.05 and (x.std(dim=(0, 2, 3)) - 1).abs().max() < 0.05
    xa, _ = next(iter(DeviceLoader(real["test"], batch_size=256, device="cpu", mean=mean, std=std, augment=True)))
    assert xa.shape == (256, 3, 32, 32) and xa.dtype == torch.float32


# --------------------------------------------------------------------------------------------------
# Pickle sources
# --------------------------------------------------------------------------------------------------


def test_cifar10_pickle_folder(tmp_path):
    want_train, want_test = write_cifar10_pickle(tmp_path / "data" / "cifar-10-batches-py")
    train, test = load_dataset("cifar10", tmp_path / "data", cache_dir=tmp_path / "cache")
    assert_same(train, want_train)
    assert_same(test, want_test)


def test_cifar10_pickle_folder_is_data_dir(tmp_path):
    want_train, _ = write_cifar10_pickle(tmp_path / "cifar-10-batches-py")
    train, _ = load_dataset("cifar10", tmp_path / "cifar-10-batches-py", cache_dir=tmp_path / "cache")
    assert_same(train, want_train)


def test_cifar10_pickle_tar(tmp_path):
    want_train, want_test = write_cifar10_pickle(tmp_path / "src" / "cifar-10-batches-py")
    (tmp_path / "data").mkdir()
    make_tar(tmp_path / "src" / "cifar-10-batches-py", tmp_path / "data" / "cifar-10-python.tar.gz")
    train, test = load_dataset("cifar10", tmp_path / "data", cache_dir=tmp_path / "cache")
    assert_same(train, want_train)
    assert_same(test, want_test)


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("mode", ["fine", "coarse"])
def test_cifar100_pickle(tmp_path, packed, mode):
    want = write_cifar100_pickle(tmp_path / "src" / "cifar-100-python")
    data = tmp_path / "data"
    data.mkdir()
    if packed:
        make_tar(tmp_path / "src" / "cifar-100-python", data / "cifar-100-python.tar.gz")
    else:
        (tmp_path / "src" / "cifar-100-python").rename(data / "cifar-100-python")
    train, test = load_dataset("cifar100", data, cache_dir=tmp_path / "cache", label_mode=mode)
    np.testing.assert_array_equal(train.images, want["train_x"])
    np.testing.assert_array_equal(test.images, want["test_x"])
    np.testing.assert_array_equal(train.labels, want[f"train_{mode}"])
    np.testing.assert_array_equal(test.labels, want[f"test_{mode}"])
    assert train.classes == (FINE if mode == "fine" else COARSE)


def test_label_mode_and_name_checks(tmp_path):
    with pytest.raises(ValueError, match="cifar10.*cifar100"):
        load_dataset("mnist", tmp_path)
    with pytest.raises(ValueError, match="coarse"):
        load_dataset("cifar10", tmp_path, label_mode="coarse")
    with pytest.raises(ValueError, match="label_mode"):
        load_dataset("cifar100", tmp_path, label_mode="super")
    assert DATASETS == {"cifar10": 10, "cifar100": 100}


# --------------------------------------------------------------------------------------------------
# Image-folder sources
# --------------------------------------------------------------------------------------------------


def expected_from_written(written: dict[str, list], classes: tuple[str, ...]) -> dict[str, ArrayDataset]:
    out = {}
    for split, items in written.items():
        items = sorted(items, key=lambda t: (classes.index(t[0]), t[1]))
        labels = np.array([classes.index(c) for c, _, _ in items], dtype=np.int64)
        out[split] = ArrayDataset(np.stack([img for _, _, img in items]), labels, classes)
    return out


@pytest.mark.parametrize("where", ["cifar10-jpeg", "cifar10", "."])
def test_image_folder(tmp_path, where):
    # written in sorted (not canonical) class order, so the loader's canonical ordering is exercised
    written = write_image_folder(tmp_path / "data" / where, classes=tuple(sorted(CIFAR10_CLASSES)))
    train, test = load_dataset("cifar10", tmp_path / "data", cache_dir=tmp_path / "cache")
    want = expected_from_written(written, CIFAR10_CLASSES)
    assert_same(train, want["train"])
    assert_same(test, want["test"])


@pytest.mark.parametrize("archive", ["cifar10-jpeg.tar.gz", "cifar10.tar.gz"])
def test_image_folder_tar(tmp_path, archive):
    names = tuple(f"class{i}" for i in reversed(range(10)))  # not canonical: sorted order is used
    written = write_image_folder(tmp_path / "src" / "cifar10-jpeg", classes=names)
    (tmp_path / "data").mkdir()
    make_tar(tmp_path / "src" / "cifar10-jpeg", tmp_path / "data" / archive)
    train, test = load_dataset("cifar10", tmp_path / "data", cache_dir=tmp_path / "cache")
    want = expected_from_written(written, tuple(sorted(names)))
    assert_same(train, want["train"])
    assert_same(test, want["test"])


def test_image_folder_for_cifar100_and_coarse(tmp_path):
    names = tuple(f"c{i:03d}" for i in range(100))
    write_image_folder(tmp_path / "cifar100", classes=names, per_class=(1, 1))
    train, test = load_dataset("cifar100", tmp_path, cache_dir=tmp_path / "cache")
    assert (len(train), len(test)) == (100, 100) and train.classes == names
    with pytest.raises(DataFormatError, match="fine labels"):
        load_dataset("cifar100", tmp_path, cache_dir=tmp_path / "cache", label_mode="coarse")


def test_corrupt_image_names_the_file(tmp_path):
    write_image_folder(tmp_path / "cifar10")
    bad = tmp_path / "cifar10" / "train" / "cat" / "0001.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(DataFormatError, match="0001.png"):
        load_dataset("cifar10", tmp_path, cache_dir=tmp_path / "cache")


def test_wrong_image_size_and_empty_split(tmp_path):
    write_image_folder(tmp_path / "cifar10")
    Image.new("RGB", (28, 28)).save(tmp_path / "cifar10" / "test" / "dog" / "0009.png")
    with pytest.raises(DataFormatError, match="0009.png.*32x32"):
        load_dataset("cifar10", tmp_path, cache_dir=tmp_path / "cache")
    empty = tmp_path / "empty"
    (empty / "cifar10" / "train").mkdir(parents=True)
    (empty / "cifar10" / "test").mkdir()
    with pytest.raises(DataFormatError, match="no .*images"):
        load_dataset("cifar10", empty, cache_dir=tmp_path / "cache")


# --------------------------------------------------------------------------------------------------
# Errors: not found, corrupt archive, bad labels
# --------------------------------------------------------------------------------------------------


def test_not_found_lists_every_candidate(tmp_path):
    with pytest.raises(DataNotFoundError) as err:
        load_dataset("cifar10", tmp_path, cache_dir=tmp_path / "cache")
    msg = str(err.value)
    for candidate in ("cifar-10-batches-py", "cifar-10-python.tar.gz", "cifar10-jpeg", "cifar10.tar.gz"):
        assert str(tmp_path / candidate) in msg
    assert "CIGL_DATA_DIR" in msg and "--data-dir" in msg and "download" in msg
    assert isinstance(err.value, FileNotFoundError)
    with pytest.raises(DataNotFoundError, match="cifar-100-python.tar.gz"):
        load_dataset("cifar100", tmp_path, cache_dir=tmp_path / "cache")


def test_resolve_data_dir(tmp_path, monkeypatch):
    monkeypatch.delenv("CIGL_DATA_DIR", raising=False)
    with pytest.raises(DataNotFoundError, match="CIGL_DATA_DIR"):
        resolve_data_dir(None)
    with pytest.raises(DataNotFoundError, match="nowhere"):
        resolve_data_dir(tmp_path / "nowhere")
    monkeypatch.setenv("CIGL_DATA_DIR", str(tmp_path))
    assert resolve_data_dir(None) == tmp_path.resolve()
    (tmp_path / "other").mkdir()
    assert resolve_data_dir(tmp_path / "other") == (tmp_path / "other").resolve()  # the option wins


@pytest.mark.parametrize("archive", ["cifar-10-python.tar.gz", "cifar10-jpeg.tar.gz"])
def test_corrupt_archive(tmp_path, archive):
    (tmp_path / archive).write_bytes(os.urandom(4096))
    with pytest.raises(DataFormatError, match=archive):
        load_dataset("cifar10", tmp_path, cache_dir=tmp_path / "cache")


def test_truncated_archive(tmp_path):
    write_image_folder(tmp_path / "src" / "cifar10-jpeg")
    full = make_tar(tmp_path / "src" / "cifar10-jpeg", tmp_path / "cifar10-jpeg.tar.gz").read_bytes()
    (tmp_path / "cifar10-jpeg.tar.gz").write_bytes(full[: len(full) // 2])
    with pytest.raises(DataFormatError, match="cifar10-jpeg.tar.gz"):
        load_dataset("cifar10", tmp_path, cache_dir=tmp_path / "cache")


def test_labels_out_of_range(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar10_pickle(folder)
    rows = as_rows(np.zeros((2, 32, 32, 3), np.uint8))
    dump(folder / "test_batch", {b"data": rows, b"labels": [3, 10]})
    with pytest.raises(DataFormatError, match="labels"):
        load_dataset("cifar10", tmp_path, cache_dir=tmp_path / "cache")


def test_wrong_pickle_shape(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar10_pickle(folder)
    dump(folder / "test_batch", {b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]})
    with pytest.raises(DataFormatError, match="3072"):
        load_dataset("cifar10", tmp_path, cache_dir=tmp_path / "cache")


# --------------------------------------------------------------------------------------------------
# Cache
# --------------------------------------------------------------------------------------------------


def test_cache_is_rekeyed_when_the_source_changes(tmp_path):
    cache = tmp_path / "cache"
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar10_pickle(folder, seed=0)
    first, _ = load_dataset("cifar10", tmp_path, cache_dir=cache)
    files = sorted(cache.glob("cifar10-fine-*.npz"))
    assert len(files) == 1
    again, _ = load_dataset("cifar10", tmp_path, cache_dir=cache)
    assert_same(again, first)
    assert sorted(cache.glob("*.npz")) == files  # served from the same cache file

    want, _ = write_cifar10_pickle(folder, seed=5)  # rewrite the source (same sizes)
    later = time.time() + 10
    os.utime(folder / "data_batch_1", (later, later))
    changed, _ = load_dataset("cifar10", tmp_path, cache_dir=cache)
    assert_same(changed, want)
    assert len(list(cache.glob("*.npz"))) == 2
    assert not list(cache.glob(".*"))  # no temp files left behind


def test_cache_rekeyed_for_touched_archive(tmp_path):
    write_cifar10_pickle(tmp_path / "src" / "cifar-10-batches-py")
    archive = make_tar(tmp_path / "src" / "cifar-10-batches-py", tmp_path / "cifar-10-python.tar.gz")
    load_dataset("cifar10", tmp_path, cache_dir=tmp_path / "cache")
    later = time.time() + 10
    os.utime(archive, (later, later))
    load_dataset("cifar10", tmp_path, cache_dir=tmp_path / "cache")
    assert len(list((tmp_path / "cache").glob("cifar10-fine-*.npz"))) == 2


def test_corrupt_cache_is_rewritten(tmp_path):
    want, _ = write_cifar10_pickle(tmp_path / "cifar-10-batches-py")
    load_dataset("cifar10", tmp_path, cache_dir=tmp_path / "cache")
    (cached,) = (tmp_path / "cache").glob("*.npz")
    cached.write_bytes(b"garbage")
    with pytest.warns(UserWarning, match="unreadable data cache"):
        train, _ = load_dataset("cifar10", tmp_path, cache_dir=tmp_path / "cache")
    assert_same(train, want)
    with np.load(cached) as z:  # rewritten with the right content
        np.testing.assert_array_equal(z["train_images"], want.images)


def test_cache_dir_from_environment(tmp_path, monkeypatch):
    write_cifar10_pickle(tmp_path / "cifar-10-batches-py")
    monkeypatch.setenv("CIGL_CACHE_DIR", str(tmp_path / "envcache"))
    load_dataset("cifar10", tmp_path)
    assert len(list((tmp_path / "envcache").glob("cifar10-fine-*.npz"))) == 1


# --------------------------------------------------------------------------------------------------
# Splits
# --------------------------------------------------------------------------------------------------


def toy(n: int = 100, n_classes: int = 10, seed: int = 0) -> ArrayDataset:
    images, labels = random_split(np.random.default_rng(seed), n, n_classes)
    return ArrayDataset(images, labels, tuple(str(i) for i in range(n_classes)))


def test_array_dataset_take_and_checks():
    ds = toy(10)
    sub = ds.take([3, 1])
    np.testing.assert_array_equal(sub.images, ds.images[[3, 1]])
    assert len(sub) == 2 and sub.classes == ds.classes
    with pytest.raises(DataFormatError):
        ArrayDataset(ds.images.astype(np.float32), ds.labels, ds.classes)
    with pytest.raises(DataFormatError):
        ArrayDataset(ds.images, ds.labels[:5], ds.classes)


def test_split_validation():
    ds = toy(100)
    train, val = split_validation(ds, 0.1, seed=3)
    assert (len(train), len(val)) == (90, 10)
    rows = lambda d: {r.tobytes() for r in d.images}  # noqa: E731
    assert not rows(train) & rows(val)
    assert rows(train) | rows(val) == rows(ds)
    again, val2 = split_validation(ds, 0.1, seed=3)
    np.testing.assert_array_equal(val.images, val2.images)
    _, other = split_validation(ds, 0.1, seed=4)
    assert rows(other) != rows(val)
    train0, val0 = split_validation(ds, 0.0, seed=3)
    assert len(val0) == 0 and len(train0) == 100
    for bad in (1.0, -0.1):
        with pytest.raises(ValueError, match="fraction"):
            split_validation(ds, bad, seed=0)


def test_take_subset():
    ds = toy(1000)
    assert take_subset(ds, None, seed=0) is ds
    sub = take_subset(ds, 50, seed=0)
    assert len(sub) == 50
    np.testing.assert_array_equal(np.bincount(sub.labels, minlength=10), [5] * 10)  # class-balanced
    np.testing.assert_array_equal(take_subset(ds, 50, seed=0).images, sub.images)
    assert not np.array_equal(take_subset(ds, 50, seed=1).images, sub.images)
    assert len(take_subset(ds, 1000, seed=0)) == 1000
    with pytest.raises(ValueError, match="subset"):
        take_subset(ds, 1001, seed=0)


# --------------------------------------------------------------------------------------------------
# DeviceLoader
# --------------------------------------------------------------------------------------------------

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


def loader(ds: ArrayDataset, **kw) -> DeviceLoader:
    kw = {"batch_size": 8, "device": "cpu", "mean": MEAN, "std": STD, **kw}
    return DeviceLoader(ds, **kw)


def unnormalise(x: torch.Tensor) -> np.ndarray:
    """float NCHW normalised -> uint8 NHWC (exact up to float rounding)."""
    m, s = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    return ((x * s + m) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def test_loader_lengths_and_batch_size_checks():
    ds = toy(20)
    assert len(loader(ds, batch_size=8)) == 3 and loader(ds).num_samples == 20
    assert len(loader(ds, batch_size=8, drop_last=True)) == 2
    assert [len(y) for _, y in loader(ds, batch_size=8)] == [8, 8, 4]
    assert [len(y) for _, y in loader(ds, batch_size=8, drop_last=True)] == [8, 8]
    assert len(loader(ds, batch_size=50)) == 1
    with pytest.raises(ValueError, match="batch_size"):
        loader(ds, batch_size=21, drop_last=True)
    for bad in (0, -1):
        with pytest.raises(ValueError, match="batch_size"):
            loader(ds, batch_size=bad)


def test_loader_normalisation_without_augmentation():
    ds = toy(20)
    batches = list(loader(ds, shuffle=False))
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    assert x.dtype == torch.float32 and x.shape == (20, 3, 32, 32) and y.dtype == torch.int64
    raw = torch.from_numpy(ds.images).permute(0, 3, 1, 2).float()
    want = (raw / 255 - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    torch.testing.assert_close(x, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(y.numpy(), ds.labels)


def test_loader_shuffle_is_a_permutation():
    ds = toy(20)
    y = torch.cat([b[1] for b in loader(ds, shuffle=True)])
    x = unnormalise(torch.cat([b[0] for b in loader(ds, shuffle=True)]))
    assert sorted(r.tobytes() for r in x) == sorted(r.tobytes() for r in ds.images)
    assert sorted(y.tolist()) == sorted(ds.labels.tolist())


def numpy_crop_flip(img: np.ndarray, dy: int, dx: int, flip: bool) -> np.ndarray:
    """Reference augmentation on one HWC image: zero-pad 4, crop 32x32 at (dy, dx), mirror."""
    out = np.pad(img, ((4, 4), (4, 4), (0, 0)))[dy : dy + 32, dx : dx + 32]
    return out[:, ::-1] if flip else out


def test_crop_flip_matches_numpy():
    ds = toy(6)
    offsets = torch.tensor([[0, 0], [8, 8], [0, 8], [3, 5], [4, 4], [7, 1]])
    flips = torch.tensor([False, True, False, True, False, True])
    x = torch.from_numpy(ds.images).permute(0, 3, 1, 2)
    got = crop_flip(x, offsets, flips, pad=4).permute(0, 2, 3, 1).numpy()
    for i, ((dy, dx), f) in enumerate(zip(offsets.tolist(), flips.tolist())):
        np.testing.assert_array_equal(got[i], numpy_crop_flip(ds.images[i], dy, dx, f))


def test_loader_augmentation_is_a_crop_and_flip():
    """Each augmented image is exactly one of the 9 x 9 x 2 pad/crop/flip views of its source."""
    ds = toy(64)
    x = unnormalise(torch.cat([b[0] for b in loader(ds, shuffle=False, augment=True, seed=1)]))
    seen = set()
    for img, src in zip(x, ds.images):
        views = [(dy, dx, f) for dy in range(9) for dx in range(9) for f in (False, True)]
        match = [v for v in views if np.array_equal(img, numpy_crop_flip(src, *v))]
        assert len(match) == 1
        seen.add(match[0])
    dys, dxs, fs = zip(*seen)
    assert set(fs) == {False, True} and min(dys) == 0 and max(dys) == 8 and len(set(dxs)) > 5


def test_loader_determinism_and_resume():
    ds = toy(50)
    a = loader(ds, augment=True, seed=7)
    b = loader(ds, augment=True, seed=7)
    full = list(a.epoch(3))
    for (xa, ya), (xb, yb) in zip(full, b.epoch(3)):
        torch.testing.assert_close(xa, xb, rtol=0, atol=0)
        torch.testing.assert_close(ya, yb, rtol=0, atol=0)
    other = list(a.epoch(4))
    assert not torch.equal(full[0][0], other[0][0])
    assert not torch.equal(full[0][0], next(iter(loader(ds, augment=True, seed=8).epoch(3)))[0])
    for k in (0, 2, len(a)):
        tail = list(b.epoch(3, start_batch=k))
        assert len(tail) == len(full) - k
        for (xt, yt), (xf, yf) in zip(tail, full[k:]):
            assert torch.equal(xt, xf) and torch.equal(yt, yf)
    assert all(torch.equal(p[0], q[0]) for p, q in zip(a, a.epoch(0)))
    with pytest.raises(ValueError, match="start_batch"):
        a.epoch(0, start_batch=len(a) + 1)


def test_loader_channels_last():
    x, _ = next(iter(loader(toy(16), augment=True, channels_last=True)))
    assert x.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_loader_cuda_matches_cpu():
    ds = toy(40)
    cpu = list(loader(ds, augment=True, seed=2).epoch(1))
    gpu = list(loader(ds, augment=True, seed=2, device="cuda").epoch(1))
    for (xc, yc), (xg, yg) in zip(cpu, gpu):
        assert xg.device.type == "cuda"
        torch.testing.assert_close(xg.cpu(), xc, rtol=1e-6, atol=1e-6)
        assert torch.equal(yg.cpu(), yc)


def test_image_batch_takes_what_predict_takes_and_names_the_rest():
    """The one check behind ``TrainedRun.predict`` and ``ExportedNetwork.predict``."""
    from cigl_bayes.data import image_batch

    rng = np.random.default_rng(0)
    nhwc = rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    want = torch.from_numpy(nhwc).permute(0, 3, 1, 2).float() / 255
    for given in (nhwc, torch.from_numpy(nhwc).permute(0, 3, 1, 2), want, want.double(), nhwc.astype(np.float32) / 255):
        got = image_batch(given, (32, 32))
        assert got.shape == (2, 3, 32, 32) and torch.allclose(got.float(), want)
    assert image_batch(nhwc[0]).shape == (1, 3, 32, 32)  # one image without N
    for bad, match in ((nhwc.astype(np.float32), r"\[0, 1\], got values in \[0, 255\]"),
                       (np.full((1, 32, 32, 3), np.nan, np.float32), r"\[0, 1\]"),
                       (-want, r"\[0, 1\]"),
                       (nhwc.astype(np.int32), "uint8 or float"),
                       (np.zeros((2, 32, 32)), "images must be"), (np.zeros((2, 32, 32, 4)), "images must be"),
                       (np.zeros((2, 64, 64, 3), np.uint8), "32×32, the size the network was trained on, got 64×64")):
        with pytest.raises(ValueError, match=match):
            image_batch(bad, (32, 32))
    assert image_batch(np.zeros((1, 64, 64, 3), np.uint8)).shape == (1, 3, 64, 64)  # no size given: not checked


def test_a_refused_image_batch_is_quoted_in_the_shape_given():
    """A grayscale batch (N, H, W) is refused quoting (2, 32, 32), not the (1, 2, 32, 32) it became inside."""
    from cigl_bayes.data import image_batch

    with pytest.raises(ValueError, match=r"got shape \(2, 32, 32\)$"):
        image_batch(np.zeros((2, 32, 32), np.uint8), (32, 32))
