"""Offline datasets for the LeNet experiments of Deep Compression (Han et al., ICLR 2016).

Nothing is downloaded.  Two sources:

* **Fashion-MNIST** (Xiao et al. 2017; same format and shape as MNIST, which the paper used):
  gzipped IDX files ``{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz`` as installed by the Debian
  package ``dataset-fashion-mnist`` into ``/usr/share/datasets/fashion-mnist/``.  60,000 training and
  10,000 test images, 28x28 uint8, 10 classes.
* **digits**: scikit-learn's bundled ``load_digits`` (1,797 8x8 images with 17 grey levels 0..16,
  10 classes), for fast tests.

The IDX reader here is a small numpy reader that validates the header (magic bytes, dtype code,
number of dimensions, dimensions against the payload size); no extra dependency.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple

import numpy as np
import torch
from torch.utils.data import TensorDataset

__all__ = [
    "DatasetNotFoundError",
    "FASHION_MNIST_MEAN",
    "FASHION_MNIST_STD",
    "DEFAULT_FASHION_MNIST_ROOT",
    "FASHION_MNIST_ENV",
    "read_idx",
    "load_fashion_mnist",
    "load_digits",
    "DatasetInfo",
    "DATASETS",
    "get_dataset",
]

#: Per-pixel mean / std of the Fashion-MNIST training images scaled to [0, 1].
FASHION_MNIST_MEAN = 0.2860
FASHION_MNIST_STD = 0.3530
#: Environment variable overriding the Fashion-MNIST directory.
FASHION_MNIST_ENV = "DCCOMP_FASHION_MNIST"
#: Where the Debian package ``dataset-fashion-mnist`` installs the files.
DEFAULT_FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist/"

_SPLITS = ("train", "test")
_FILE_PREFIX = {"train": "train", "test": "t10k"}

# IDX dtype codes -> big-endian numpy dtypes
_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


class DatasetNotFoundError(FileNotFoundError):
    """A dataset's files are not where they were looked for (message names the path and the fix)."""


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file (optionally gzip-compressed, detected from the ``.gz`` suffix).

    Format (big-endian): two zero bytes, a dtype code (0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32,
    0x0D float32, 0x0E float64), the number of dimensions ``d``, then ``d`` uint32 sizes, then the
    data in C order.

    Returns
    -------
    numpy array of the stored dtype (native byte order) with the stored shape.

    Raises
    ------
    FileNotFoundError
        the file does not exist.
    ValueError
        corrupt file: bad gzip stream, bad magic, unknown dtype code, zero dimensions, or payload size
        not equal to ``prod(dims) * itemsize``; the message names the file.
    """
    path = Path(path)
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                raw = f.read()
        else:
            raw = path.read_bytes()
    except FileNotFoundError:
        raise
    except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
        raise ValueError(f"corrupt IDX file {path}: cannot decompress ({e})") from e

    if len(raw) < 4:
        raise ValueError(f"corrupt IDX file {path}: {len(raw)} bytes, shorter than the 4-byte magic")
    zero0, zero1, code, ndim = raw[0], raw[1], raw[2], raw[3]
    if zero0 != 0 or zero1 != 0:
        raise ValueError(f"corrupt IDX file {path}: magic must start with two zero bytes, got {raw[:4].hex()}")
    if code not in _IDX_DTYPES:
        raise ValueError(f"corrupt IDX file {path}: unknown dtype code 0x{code:02x}")
    if ndim == 0:
        raise ValueError(f"corrupt IDX file {path}: zero dimensions")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"corrupt IDX file {path}: truncated header ({len(raw)} < {header} bytes)")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = _IDX_DTYPES[code]
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    payload = len(raw) - header
    if payload != expected:
        raise ValueError(
            f"corrupt IDX file {path}: header says shape {dims} of {dtype.name} "
            f"({expected} bytes) but the payload has {payload} bytes"
        )
    arr = np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)
    return arr.astype(dtype.newbyteorder("="), copy=True)


def _fashion_root(root: Optional[str | os.PathLike]) -> Path:
    if root is not None:
        return Path(root)
    env = os.environ.get(FASHION_MNIST_ENV)
    return Path(env) if env else Path(DEFAULT_FASHION_MNIST_ROOT)


def load_fashion_mnist(
    root: Optional[str | os.PathLike] = None, split: str = "train"
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Load Fashion-MNIST from local gzipped IDX files.

    Parameters
    ----------
    root:
        Directory holding ``{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz``.  Default: the
        environment variable ``DCCOMP_FASHION_MNIST`` if set, else
        ``/usr/share/datasets/fashion-mnist/`` (Debian package ``dataset-fashion-mnist``).
    split:
        ``"train"`` (60,000 images) or ``"test"`` (10,000 images, the ``t10k`` files).

    Returns
    -------
    images:
        ``torch.float32`` tensor ``(N, 1, 28, 28)``: pixels scaled to [0, 1], then normalised as
        ``(p - 0.2860) / 0.3530`` (training-set mean and std).
    labels:
        ``torch.int64`` tensor ``(N,)`` with values in ``0..9``.

    Raises
    ------
    ValueError
        unknown ``split``; corrupt/truncated file (message names the file); image and label counts
        differ; images not ``(N, 28, 28)`` uint8; labels out of 0..9.
    DatasetNotFoundError
        (a ``FileNotFoundError``) a file is missing; the message names the path tried and how to
        install the data (``apt-get install -y dataset-fashion-mnist``) or point
        ``DCCOMP_FASHION_MNIST`` at it.
    """
    if split not in _SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {_SPLITS}")
    base = _fashion_root(root)
    prefix = _FILE_PREFIX[split]
    img_path = base / f"{prefix}-images-idx3-ubyte.gz"
    lbl_path = base / f"{prefix}-labels-idx1-ubyte.gz"
    for p in (img_path, lbl_path):
        if not p.is_file():
            raise DatasetNotFoundError(
                f"Fashion-MNIST file not found: {p}. Install the dataset with "
                f"`apt-get install -y dataset-fashion-mnist` (files go to {DEFAULT_FASHION_MNIST_ROOT}), "
                f"or set {FASHION_MNIST_ENV} (or pass root=) to a directory holding "
                f"{prefix}-images-idx3-ubyte.gz and {prefix}-labels-idx1-ubyte.gz."
            )
    images = read_idx(img_path)
    labels = read_idx(lbl_path)
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
        raise ValueError(f"corrupt IDX file {img_path}: expected uint8 (N, 28, 28), got {images.dtype} {images.shape}")
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise ValueError(f"corrupt IDX file {lbl_path}: expected uint8 (N,), got {labels.dtype} {labels.shape}")
    if labels.shape[0] != images.shape[0]:
        raise ValueError(
            f"Fashion-MNIST {split}: {images.shape[0]} images in {img_path} but {labels.shape[0]} labels in {lbl_path}"
        )
    if labels.size and labels.max() > 9:
        raise ValueError(f"corrupt IDX file {lbl_path}: label {int(labels.max())} outside 0..9")
    x = torch.from_numpy(images).to(torch.float32).div_(255.0)
    x = x.sub_(FASHION_MNIST_MEAN).div_(FASHION_MNIST_STD).unsqueeze(1)
    y = torch.from_numpy(labels.astype(np.int64))
    return x.contiguous(), y


def load_digits(split: str = "train", test_fraction: float = 0.25, seed: int = 0) -> Tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's bundled 8x8 digits with a deterministic stratified train/test split.

    Parameters
    ----------
    split:
        ``"train"`` or ``"test"``.
    test_fraction:
        Fraction of each class put in the test split, ``0 < test_fraction < 1`` (default 0.25:
        1,347 train / 450 test images).
    seed:
        ``random_state`` of ``sklearn.model_selection.train_test_split``; the two splits of one
        ``(test_fraction, seed)`` are disjoint and cover all 1,797 images.

    Returns
    -------
    images: ``torch.float32`` ``(N, 1, 8, 8)`` in [0, 1] (grey levels 0..16 divided by 16).
    labels: ``torch.int64`` ``(N,)`` in ``0..9``.

    Raises
    ------
    ValueError: unknown ``split`` or ``test_fraction`` outside (0, 1).
    """
    if split not in _SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {_SPLITS}")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    from sklearn.datasets import load_digits as _sk_load_digits
    from sklearn.model_selection import train_test_split

    d = _sk_load_digits()
    data = d.images.astype(np.float32) / 16.0
    target = d.target.astype(np.int64)
    idx_train, idx_test = train_test_split(
        np.arange(len(target)), test_size=test_fraction, random_state=seed, stratify=target
    )
    idx = np.sort(idx_train if split == "train" else idx_test)
    x = torch.from_numpy(np.ascontiguousarray(data[idx])).unsqueeze(1)
    y = torch.from_numpy(target[idx])
    return x, y


class DatasetInfo:
    """A registered dataset: loader, per-example input shape ``(C, H, W)`` and class count."""

    def __init__(self, name: str, loader: Callable[..., Tuple[torch.Tensor, torch.Tensor]],
                 input_shape: Tuple[int, int, int], num_classes: int, takes_root: bool):
        self.name = name
        self.loader = loader
        self.input_shape = input_shape
        self.num_classes = num_classes
        self.takes_root = takes_root

    def load(self, split: str = "train", root: Optional[str | os.PathLike] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(images, labels)`` tensors of ``split``; ``root`` only applies to file-based datasets."""
        if self.takes_root:
            return self.loader(root=root, split=split)
        return self.loader(split=split)

    def __repr__(self) -> str:
        return f"DatasetInfo({self.name!r}, input_shape={self.input_shape}, num_classes={self.num_classes})"


#: Registry of offline datasets by name.
DATASETS: Dict[str, DatasetInfo] = {
    "fashion-mnist": DatasetInfo("fashion-mnist", load_fashion_mnist, (1, 28, 28), 10, takes_root=True),
    "digits": DatasetInfo("digits", load_digits, (1, 8, 8), 10, takes_root=False),
}


def get_dataset(name: str, split: str = "train", root: Optional[str | os.PathLike] = None) -> TensorDataset:
    """``TensorDataset(images, labels)`` for a registered dataset (see :data:`DATASETS`).

    ``DATASETS[name].input_shape`` gives the per-example shape ``(C, H, W)``.

    Raises
    ------
    ValueError: unknown ``name`` (the message lists the known ones) or ``split``.
    DatasetNotFoundError, ValueError: from the loader (missing / corrupt files).
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(sorted(DATASETS))}")
    x, y = DATASETS[name].load(split=split, root=root)
    return TensorDataset(x, y)
