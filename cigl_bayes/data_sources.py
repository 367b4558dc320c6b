"""CIFAR on disk: what a split is, where a release may lie, and how each format is read safely.

* A split on the host is an :class:`ArrayDataset`: ``images`` uint8 ``(N, 32, 32, 3)`` RGB (NHWC),
  ``labels`` int64 ``(N,)`` in ``[0, num_classes)``, ``classes`` the class names by label index.
* Inside a data directory each dataset is looked for in several layouts, in order
  (:func:`candidate_sources`): the canonical python pickle folder, its ``.tar.gz``, an image folder
  ``{train,test}/<class>/*.{jpg,jpeg,png}``, and a ``.tar.gz`` of such a folder.  Archives are read
  in place, never extracted.
* The pickle release is read through a restricted unpickler (:class:`_BatchUnpickler`) that builds
  numpy arrays and plain values only: a batch file someone handed you cannot run code.
* :func:`read_source` decodes one source into (train, test); :func:`validate_split` checks a split.

Caching, the public :func:`~cigl_bayes.data.load_dataset` and the splits live in :mod:`cigl_bayes.data`,
which re-exports the public names here.
"""

from __future__ import annotations

import gzip
import io
import os
import pickle
import tarfile
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any

import numpy as np
from PIL import Image

__all__ = [
    "CIFAR10_CLASSES",
    "DATASETS",
    "NORMALIZATION",
    "PICKLE_LAYOUTS",
    "ArrayDataset",
    "DataFormatError",
    "DataNotFoundError",
    "Source",
    "candidate_sources",
    "find_source",
    "not_found_message",
    "num_classes",
    "read_source",
    "resolve_data_dir",
    "validate_split",
]

DATA_DIR_ENV = "CIGL_DATA_DIR"
IMAGE_SHAPE = (32, 32, 3)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
SPLITS = ("train", "test")

DATASETS: dict[str, int] = {"cifar10": 10, "cifar100": 100}
COARSE_CLASSES = 20  # cifar100 super-classes

NORMALIZATION: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}

CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip


class DataNotFoundError(FileNotFoundError):
    """No data directory, or no dataset in it; the message lists where we looked and how to fix it."""


class DataFormatError(ValueError):
    """A source was found but is unreadable or wrong (corrupt archive, bad shapes or labels, empty split)."""


# --------------------------------------------------------------------------------------------------
# In-memory dataset
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class ArrayDataset:
    """One split on the host: uint8 ``(N, H, W, 3)`` images, int64 ``(N,)`` labels, class names."""

    images: np.ndarray
    labels: np.ndarray
    classes: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.images.dtype != np.uint8 or self.images.ndim != 4 or self.images.shape[-1] != 3:
            raise DataFormatError(f"images must be uint8 (N, H, W, 3), got {self.images.dtype} {self.images.shape}")
        if self.labels.dtype != np.int64 or self.labels.shape != (len(self.images),):
            raise DataFormatError(
                f"labels must be int64 ({len(self.images)},), got {self.labels.dtype} {self.labels.shape}"
            )

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, indices: Sequence[int] | np.ndarray) -> ArrayDataset:
        """The samples at ``indices`` (in that order), same class names."""
        idx = np.asarray(indices, dtype=np.int64)
        return ArrayDataset(self.images[idx], self.labels[idx], self.classes)


def num_classes(name: str, label_mode: str = "fine") -> int:
    """Number of classes of ``name`` under ``label_mode`` ("coarse" only for cifar100: 20)."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(sorted(DATASETS))}")
    if label_mode not in ("fine", "coarse"):
        raise ValueError(f"label_mode must be 'fine' or 'coarse', got {label_mode!r}")
    if label_mode == "coarse":
        if name != "cifar100":
            raise ValueError(f"label_mode='coarse' exists only for cifar100, not {name!r}")
        return COARSE_CLASSES
    return DATASETS[name]


# --------------------------------------------------------------------------------------------------
# Finding a source
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    """One place a dataset may live: ``kind`` is pickle-dir | pickle-tar | image-dir | image-tar."""

    kind: str
    path: Path

    def exists(self, name: str) -> bool:
        """Whether this candidate is present on disk (cheap checks, no reading)."""
        if self.kind.endswith("-tar"):
            return self.path.is_file()
        if self.kind == "image-dir":
            return all((self.path / split).is_dir() for split in SPLITS)
        return all((self.path / f).is_file() for f in PICKLE_LAYOUTS[name].markers)

    def describe(self) -> str:
        what = {
            "pickle-dir": "python pickle folder",
            "pickle-tar": "python pickle archive",
            "image-dir": "image folder train/<class>/*.jpg|png + test/<class>/...",
            "image-tar": "image-folder archive",
        }[self.kind]
        slash = "/" if self.kind.endswith("-dir") else ""
        return f"{self.path}{slash} ({what})"


@dataclass(frozen=True)
class _PickleLayout:
    """File names and keys of the canonical python-pickle release of one dataset."""

    folder: str
    archive: str
    train: tuple[str, ...]
    test: tuple[str, ...]
    meta: str
    keys: dict[str, tuple[str, str]]  # label_mode -> (labels key, label-names key)

    @property
    def markers(self) -> tuple[str, ...]:
        return (self.meta, *self.test)


PICKLE_LAYOUTS = {
    "cifar10": _PickleLayout(
        folder="cifar-10-batches-py",
        archive="cifar-10-python.tar.gz",
        train=tuple(f"data_batch_{i}" for i in range(1, 6)),
        test=("test_batch",),
        meta="batches.meta",
        keys={"fine": ("labels", "label_names")},
    ),
    "cifar100": _PickleLayout(
        folder="cifar-100-python",
        archive="cifar-100-python.tar.gz",
        train=("train",),
        test=("test",),
        meta="meta",
        keys={
            "fine": ("fine_labels", "fine_label_names"),
            "coarse": ("coarse_labels", "coarse_label_names"),
        },
    ),
}


def resolve_data_dir(data_dir: str | os.PathLike | None) -> Path:
    """``data_dir`` if given, else ``$CIGL_DATA_DIR``; it must exist (else :class:`DataNotFoundError`)."""
    if data_dir is not None and str(data_dir) != "":
        path, origin = Path(data_dir).expanduser(), "--data-dir / data_dir"
    elif os.environ.get(DATA_DIR_ENV):
        path, origin = Path(os.environ[DATA_DIR_ENV]).expanduser(), f"${DATA_DIR_ENV}"
    else:
        raise DataNotFoundError(
            "no data directory given: pass --data-dir DIR (data_dir=...) or set the environment variable "
            f"{DATA_DIR_ENV}=DIR to the folder holding CIFAR (e.g. cifar10-jpeg.tar.gz or "
            "cifar-10-batches-py/); with --download (download=True) CIFAR is fetched into that folder"
        )
    if not path.is_dir():
        raise DataNotFoundError(
            f"data directory {path} (from {origin}) does not exist or is not a folder; pass --data-dir DIR, "
            f"set {DATA_DIR_ENV}=DIR, or use --download (download=True) to fetch CIFAR into it"
        )
    return path.resolve()


def candidate_sources(name: str, root: Path) -> list[Source]:
    """Every place ``name`` is looked for inside ``root``, in order of preference."""
    layout = PICKLE_LAYOUTS[name]
    short = name  # "cifar10" / "cifar100"
    image_dirs = [root / f"{short}-jpeg", root / short] + ([root] if name == "cifar10" else [])
    return [
        Source("pickle-dir", root / layout.folder),
        Source("pickle-dir", root),
        Source("pickle-tar", root / layout.archive),
        *(Source("image-dir", d) for d in image_dirs),
        Source("image-tar", root / f"{short}-jpeg.tar.gz"),
        Source("image-tar", root / f"{short}.tar.gz"),
    ]


def find_source(name: str, root: Path) -> Source | None:
    """The first candidate source of ``name`` present in ``root``, or None."""
    return next((s for s in candidate_sources(name, root) if s.exists(name)), None)


def not_found_message(name: str, root: Path) -> str:
    looked = "\n".join(f"  - {s.describe()}" for s in candidate_sources(name, root))
    return (
        f"{name} not found in data directory {root}. Looked for:\n{looked}\n"
        f"Fix: pass --data-dir DIR (data_dir=...) pointing at the folder that holds one of these, set "
        f"{DATA_DIR_ENV}=DIR, or use --download (download=True) to fetch it with torchvision."
    )


# --------------------------------------------------------------------------------------------------
# Reading sources
# --------------------------------------------------------------------------------------------------

_ARCHIVE_ERRORS = (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile)


def _latin1_encode(text: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """``_codecs.encode`` as protocol-2 pickles use it for bytes (``encode(text, "latin1")``), and nothing else."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1") or errors != "strict":
        raise pickle.UnpicklingError(f"_codecs.encode with {encoding!r} is not how a pickle stores bytes")
    return text.encode("latin1")


def _pickle_globals() -> dict[tuple[str, str], Any]:
    """The only globals a CIFAR batch pickle names: numpy array reconstruction (under numpy 1's and
    numpy 2's module names, protocols 2–5) and the bytes encoding of protocol 2."""
    try:
        from numpy._core import multiarray, numeric
    except ImportError:  # numpy < 2
        from numpy.core import multiarray, numeric
    allowed: dict[tuple[str, str], Any] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
                                           ("_codecs", "encode"): _latin1_encode}
    for core in ("numpy.core", "numpy._core"):
        allowed[(f"{core}.multiarray", "_reconstruct")] = multiarray._reconstruct
        allowed[(f"{core}.multiarray", "scalar")] = multiarray.scalar
        if hasattr(numeric, "_frombuffer"):
            allowed[(f"{core}.numeric", "_frombuffer")] = numeric._frombuffer
    return allowed


class _BatchUnpickler(pickle.Unpickler):
    """An unpickler that builds dicts, lists, strings, numbers and numpy arrays, and refuses every
    other global: a CIFAR batch file someone handed you cannot run code through it."""

    def __init__(self, raw: IO[bytes], where: str):
        super().__init__(raw, encoding="bytes")
        self.where = where
        self.allowed = _pickle_globals()

    def find_class(self, module: str, name: str) -> Any:
        found = self.allowed.get((module, name))
        if found is None:
            raise DataFormatError(f"{self.where} is not a CIFAR batch: it names {module}.{name}, which a CIFAR "
                                  "pickle never needs (refused without running it)")
        return found

    def persistent_load(self, pid: Any) -> Any:
        raise DataFormatError(f"{self.where} is not a CIFAR batch: it holds a persistent reference")


def _unpickle(raw: IO[bytes], where: str) -> dict[str, Any]:
    """Load one CIFAR pickle (python-2 era: bytes keys) into a dict with str keys, through
    :class:`_BatchUnpickler` (numpy arrays and plain values only)."""
    try:
        obj = _BatchUnpickler(raw, where).load()
    except DataFormatError:
        raise
    except Exception as e:  # unpickling garbage can raise almost anything
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataFormatError(f"cannot unpickle {where}: {first}") from e
    if not isinstance(obj, dict):
        raise DataFormatError(f"{where} holds a {type(obj).__name__}, expected a dict")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _get(batch: dict[str, Any], key: str, where: str) -> Any:
    if key not in batch:
        raise DataFormatError(f"{where} has no {key!r} entry (keys: {sorted(batch)})")
    return batch[key]


def _pickle_split(batches: list[dict[str, Any]], labels_key: str, where: str) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate pickle batches: ``data`` (N, 3072) row-major CHW uint8 -> (N, 32, 32, 3)."""
    images, labels = [], []
    for batch in batches:
        data = np.asarray(_get(batch, "data", where))
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise DataFormatError(f"{where}: 'data' must be uint8 (N, 3072), got {data.dtype} {data.shape}")
        images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.append(np.asarray(_get(batch, labels_key, where), dtype=np.int64).reshape(-1))
    return np.ascontiguousarray(np.concatenate(images)), np.concatenate(labels)


def _names(meta: dict[str, Any], key: str, where: str) -> tuple[str, ...]:
    return tuple(n.decode() if isinstance(n, bytes) else str(n) for n in _get(meta, key, where))


def _assemble_pickle(files: dict[str, dict[str, Any]], name: str, label_mode: str, where: str):
    """(train, test) ArrayDatasets from the unpickled files of one pickle release, by file name."""
    layout = PICKLE_LAYOUTS[name]
    missing = [f for f in (*layout.train, *layout.test, layout.meta) if f not in files]
    if missing:
        raise DataFormatError(f"{where} lacks {', '.join(missing)}")
    labels_key, names_key = layout.keys[label_mode]
    classes = _names(files[layout.meta], names_key, f"{where}/{layout.meta}")
    splits = []
    for names in (layout.train, layout.test):
        x, y = _pickle_split([files[f] for f in names], labels_key, f"{where}/{names[0]}")
        splits.append(ArrayDataset(x, y, classes))
    return splits[0], splits[1]


def _read_pickle_dir(folder: Path, name: str, label_mode: str):
    layout = PICKLE_LAYOUTS[name]
    files = {}
    for fname in (*layout.train, *layout.test, layout.meta):
        if (folder / fname).is_file():
            with open(folder / fname, "rb") as f:
                files[fname] = _unpickle(f, str(folder / fname))
    return _assemble_pickle(files, name, label_mode, str(folder))


def _read_pickle_tar(archive: Path, name: str, label_mode: str):
    """Stream the canonical ``cifar-*-python.tar.gz``, unpickling the wanted members as they pass."""
    layout = PICKLE_LAYOUTS[name]
    wanted = {*layout.train, *layout.test, layout.meta}
    files = {}
    try:
        with tarfile.open(archive, "r|gz") as tf:
            for member in tf:
                path = PurePosixPath(member.name)
                if member.isfile() and path.name in wanted and path.parent.name in ("", layout.folder):
                    files[path.name] = _unpickle(tf.extractfile(member), f"{archive}:{member.name}")
    except _ARCHIVE_ERRORS as e:
        raise DataFormatError(f"cannot read archive {archive}: {e}") from e
    return _assemble_pickle(files, name, label_mode, str(archive))


@dataclass(frozen=True)
class _ImageFile:
    """One encoded image of an image-folder source: split, class folder, file name, raw bytes."""

    split: str
    label: str
    name: str
    data: bytes


def _image_entry(path: PurePosixPath) -> tuple[str, str] | None:
    """(split, class) for ``.../{train,test}/<class>/<file>.{jpg,jpeg,png}``, else None."""
    parts = path.parts
    if len(parts) < 3 or path.suffix.lower() not in IMAGE_SUFFIXES or path.name.startswith("."):
        return None
    return (parts[-3], parts[-2]) if parts[-3] in SPLITS else None


def _list_image_dir(folder: Path) -> Iterator[_ImageFile]:
    for split in SPLITS:
        for class_dir in sorted(p for p in (folder / split).iterdir() if p.is_dir()):
            for file in sorted(class_dir.iterdir()):
                if file.is_file() and _image_entry(PurePosixPath(split, class_dir.name, file.name)):
                    yield _ImageFile(split, class_dir.name, str(file), file.read_bytes())


def _list_image_tar(archive: Path) -> list[_ImageFile]:
    """All image members of a tar.gz of an image folder, read in streaming mode (no extraction)."""
    files = []
    try:
        with tarfile.open(archive, "r|gz") as tf:
            for member in tf:
                entry = _image_entry(PurePosixPath(member.name)) if member.isfile() else None
                if entry is not None:
                    data = tf.extractfile(member).read()
                    files.append(_ImageFile(entry[0], entry[1], f"{archive}:{member.name}", data))
    except _ARCHIVE_ERRORS as e:
        raise DataFormatError(f"cannot read archive {archive}: {e}") from e
    return files


def _order_classes(names: Iterable[str]) -> tuple[str, ...]:
    """Canonical CIFAR-10 order when the names are the CIFAR-10 ones, else sorted."""
    names = set(names)
    return CIFAR10_CLASSES if names == set(CIFAR10_CLASSES) else tuple(sorted(names))


def _decode_images(files: Sequence[_ImageFile]) -> np.ndarray:
    """Decode encoded images into one preallocated uint8 (N, 32, 32, 3) RGB array."""
    out = np.empty((len(files), *IMAGE_SHAPE), dtype=np.uint8)
    for i, f in enumerate(files):
        try:
            with Image.open(io.BytesIO(f.data)) as im:
                rgb = np.asarray(im.convert("RGB"))
        except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, ... on broken files
            raise DataFormatError(f"cannot decode image {f.name}: {e}") from e
        if rgb.shape != IMAGE_SHAPE:
            raise DataFormatError(f"image {f.name} is {rgb.shape[1]}x{rgb.shape[0]}, expected 32x32")
        out[i] = rgb
    return out


def _assemble_images(files: list[_ImageFile], where: str) -> tuple[ArrayDataset, ArrayDataset]:
    """(train, test) from the image files of a folder or archive; order: class, then file name."""
    by_split = {s: [f for f in files if f.split == s] for s in SPLITS}
    for split, split_files in by_split.items():
        if not split_files:
            raise DataFormatError(f"{where}: no {'|'.join(IMAGE_SUFFIXES)} images under {split}/<class>/")
    classes = _order_classes(f.label for f in by_split["train"])
    index = {c: i for i, c in enumerate(classes)}
    extra = sorted({f.label for f in by_split["test"]} - set(classes))
    if extra:
        raise DataFormatError(f"{where}: test/ has classes missing from train/: {', '.join(extra)}")
    splits = []
    for split in SPLITS:
        ordered = sorted(by_split[split], key=lambda f: (index[f.label], f.name))
        labels = np.fromiter((index[f.label] for f in ordered), dtype=np.int64, count=len(ordered))
        splits.append(ArrayDataset(_decode_images(ordered), labels, classes))
    return splits[0], splits[1]


def read_source(source: Source, name: str, label_mode: str) -> tuple[ArrayDataset, ArrayDataset]:
    """Decode ``source`` into (train, test) without any caching."""
    if source.kind == "pickle-dir":
        return _read_pickle_dir(source.path, name, label_mode)
    if source.kind == "pickle-tar":
        return _read_pickle_tar(source.path, name, label_mode)
    if label_mode != "fine":
        raise DataFormatError(
            f"{source.path} is an image folder, which carries only fine labels; "
            f"label_mode={label_mode!r} needs the python pickle release ({PICKLE_LAYOUTS[name].archive})"
        )
    if source.kind == "image-dir":
        return _assemble_images(list(_list_image_dir(source.path)), str(source.path))
    return _assemble_images(_list_image_tar(source.path), str(source.path))


def validate_split(ds: ArrayDataset, n_classes: int, where: str) -> None:
    """Raise DataFormatError unless ``ds`` is a non-empty 32x32 RGB split with labels in range."""
    if len(ds) == 0:
        raise DataFormatError(f"{where} is empty")
    if ds.images.shape[1:] != IMAGE_SHAPE:
        raise DataFormatError(f"{where}: images are {ds.images.shape[1:]}, expected {IMAGE_SHAPE}")
    if len(ds.classes) != n_classes:
        raise DataFormatError(f"{where}: {len(ds.classes)} class names, expected {n_classes}")
    lo, hi = int(ds.labels.min()), int(ds.labels.max())
    if lo < 0 or hi >= n_classes:
        raise DataFormatError(f"{where}: labels span [{lo}, {hi}], expected within [0, {n_classes})")

