"""ImageNet (paper Fig. 3) from the standard ImageFolder layout, with the usual ResNet-50 augmentation.

    DATA_DIR/imagenet/train/<class>/*.JPEG      (or DATA_DIR/train/...)
    DATA_DIR/imagenet/val/<class>/*.JPEG

Training images: random-resized crop to 224 (scale (0.08, 1), ratio (3/4, 4/3), the torchvision
algorithm) and a horizontal flip with probability ½, drawn from a generator seeded by
(seed, epoch, image index) so every epoch is reproducible and resumable.  Evaluation images:
resize the shorter side to 256, center crop 224.  Decoding happens either in DataLoader worker
processes (CPU) or, on CUDA, for the whole batch on the GPU with ``torchvision.io.decode_jpeg``
(workers then only read the bytes); both paths share :func:`transform`.  Per-image Python work
is unavoidable here (images differ in size), unlike the CIFAR path.  torchvision 0.29 deprecates
its decoders in favour of torchcodec; moving to torchcodec is left for when it is a dependency.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from torch import Tensor
from torchvision.io import ImageReadMode, decode_image, decode_jpeg, read_file

from .data import DataNotFoundError, resolve_data_dir
from .distributed import DistInfo, shard_positions

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
EXTENSIONS = {".jpg", ".jpeg", ".png"}
TRAIN_SIZE, RESIZE = 224, 256


@dataclass
class ImageFolderIndex:
    files: list[str]
    labels: np.ndarray  # int64
    classes: list[str]

    def __len__(self) -> int:
        return len(self.files)

    def subset(self, idx: np.ndarray) -> ImageFolderIndex:
        return ImageFolderIndex([self.files[i] for i in idx], self.labels[idx], self.classes)


def find_imagenet(data_dir: str | os.PathLike | None) -> Path:
    """The folder holding ``train/`` and ``val/`` (``DATA_DIR/imagenet`` or ``DATA_DIR`` itself)."""
    root = resolve_data_dir(data_dir)
    for candidate in (root / "imagenet", root):
        if (candidate / "train").is_dir() and (candidate / "val").is_dir():
            return candidate
    raise DataNotFoundError(f"no ImageNet found: looked for {root / 'imagenet'}/{{train,val}}/<class>/ and "
                            f"{root}/{{train,val}}/<class>/; put the ImageFolder layout there (class folders "
                            "with images in train/ and val/)")


def index_folder(split: Path, classes: Sequence[str] | None = None) -> ImageFolderIndex:
    """Sorted (file, label) pairs of ``split/<class>/*``; ``classes`` fixes the label order."""
    found = sorted(d.name for d in split.iterdir() if d.is_dir())
    if classes is None:
        classes = found
    elif found != list(classes):
        raise DataNotFoundError(f"{split} has class folders {found[:5]}… that differ from train's {list(classes)[:5]}…")
    if not classes:
        raise DataNotFoundError(f"{split} has no class folders")
    files, labels = [], []
    for label, name in enumerate(classes):
        images = sorted(p for p in (split / name).iterdir() if p.suffix.lower() in EXTENSIONS)
        files += [str(p) for p in images]
        labels += [label] * len(images)
    if not files:
        raise DataNotFoundError(f"{split} holds no images ({', '.join(sorted(EXTENSIONS))})")
    return ImageFolderIndex(files, np.asarray(labels, dtype=np.int64), list(classes))


def random_resized_crop_params(height: int, width: int, rng: np.random.Generator,
                               scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """(top, left, h, w) as torchvision's RandomResizedCrop draws it, from ``rng``."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    in_ratio = width / height  # fallback: central crop
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def transform(img: Tensor, train: bool, rng: np.random.Generator | None) -> Tensor:
    """uint8 (3, H, W) → uint8 (3, 224, 224): train crop + flip, or resize 256 + center crop."""
    if img.shape[0] == 1:
        img = img.expand(3, -1, -1)
    if train:
        top, left, h, w = random_resized_crop_params(img.shape[1], img.shape[2], rng)
        img = TF.resized_crop(img, top, left, h, w, [TRAIN_SIZE, TRAIN_SIZE], antialias=True)
        return TF.horizontal_flip(img) if rng.random() < 0.5 else img
    img = TF.resize(img, RESIZE, antialias=True)
    return TF.center_crop(img, [TRAIN_SIZE, TRAIN_SIZE])


class _Images(torch.utils.data.Dataset):
    """Item i → (uint8 image or raw file bytes, label, i)."""

    def __init__(self, index: ImageFolderIndex, train: bool, seed: int, decode: bool):
        self.index, self.train, self.seed, self.decode = index, train, seed, decode
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.index)

    def rng(self, i: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, i])

    def __getitem__(self, i: int):
        data = read_file(self.index.files[i])
        if not self.decode:
            return data, int(self.index.labels[i]), i
        img = decode_image(data, mode=ImageReadMode.RGB)
        return transform(img, self.train, self.rng(i) if self.train else None), int(self.index.labels[i]), i


def _collate(items):
    return [it[0] for it in items], torch.tensor([it[1] for it in items]), [it[2] for it in items]


class ImageNetLoader:
    """Batches of (x normalised NCHW, y) on ``device``; same interface as ``DeviceLoader``.

    ``decode_on``: "workers" (CPU decoding in DataLoader workers) or a device name whose
    ``decode_jpeg`` decodes each batch (default: the training device when it is CUDA)."""

    def __init__(self, index: ImageFolderIndex, *, batch_size: int, device: torch.device | str,
                 train: bool, shuffle: bool, seed: int = 0, num_workers: int | None = None,
                 decode_on: str | None = None, shard: tuple[int, int] = (0, 1), channels_last: bool = False,
                 dtype: torch.dtype = torch.float32):
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.device = torch.device(device)
        self.decode_on = decode_on or ("cuda" if self.device.type == "cuda" else "workers")
        self.index, self.batch_size, self.train, self.shuffle, self.seed = index, batch_size, train, shuffle, seed
        self.shard, self.channels_last, self.dtype = shard, channels_last, dtype
        self.num_workers = min(8, os.cpu_count() or 1) if num_workers is None else num_workers
        self.images = _Images(index, train, seed, decode=self.decode_on == "workers")
        self.labels = torch.from_numpy(index.labels)
        self.mean = torch.tensor(MEAN, device=self.device, dtype=dtype).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(STD, device=self.device, dtype=dtype).view(1, 3, 1, 1) * 255

    @property
    def num_samples(self) -> int:
        return len(self.index)

    def __len__(self) -> int:
        return math.ceil(self.num_samples / self.batch_size)

    def _batches(self, epoch: int, start_batch: int) -> list[list[int]]:
        if self.shuffle:
            state = np.random.SeedSequence([self.seed, epoch]).generate_state(1)[0]
            order = torch.randperm(self.num_samples, generator=torch.Generator().manual_seed(int(state))).tolist()
        else:
            order = list(range(self.num_samples))
        info = DistInfo(*self.shard)
        out = []
        for b in range(start_batch, len(self)):
            sl = shard_positions(b * self.batch_size, min((b + 1) * self.batch_size, self.num_samples), info)
            out.append(order[sl])
        return out

    def epoch(self, epoch: int, start_batch: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
        if not 0 <= start_batch <= len(self):
            raise ValueError(f"start_batch must be in [0, {len(self)}], got {start_batch}")
        self.images.epoch = epoch
        loader = torch.utils.data.DataLoader(self.images, batch_sampler=self._batches(epoch, start_batch),
                                             num_workers=self.num_workers, collate_fn=_collate,
                                             pin_memory=self.device.type == "cuda",
                                             persistent_workers=False)
        return (self._finish(*batch) for batch in loader)

    def _finish(self, items: list[Tensor], y: Tensor, idx: list[int]) -> tuple[Tensor, Tensor]:
        if self.decode_on != "workers":  # whole batch decoded on one device, then the same transforms
            decoded = decode_jpeg(items, mode=ImageReadMode.RGB, device=self.decode_on)
            items = [transform(img, self.train, self.images.rng(i) if self.train else None)
                     for img, i in zip(decoded, idx)]
        x = torch.stack(items).to(self.device, non_blocking=True).to(self.dtype)
        x = (x - self.mean) / self.std
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y.to(self.device, non_blocking=True)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        return self.epoch(0)


def split_index(index: ImageFolderIndex, fraction: float, seed: int) -> tuple[ImageFolderIndex, ImageFolderIndex]:
    """(train, held-out) with ``fraction`` of every class held out (seeded)."""
    rng = np.random.default_rng(seed)
    held = []
    for c in range(len(index.classes)):
        members = np.flatnonzero(index.labels == c)
        k = int(round(fraction * len(members)))
        held += rng.choice(members, size=k, replace=False).tolist()
    mask = np.zeros(len(index), dtype=bool)
    mask[held] = True
    return index.subset(np.flatnonzero(~mask)), index.subset(np.flatnonzero(mask))


def take(index: ImageFolderIndex, n: int | None, seed: int) -> ImageFolderIndex:
    if n is None or n >= len(index):
        return index
    return index.subset(np.sort(np.random.default_rng(seed).choice(len(index), size=n, replace=False)))
