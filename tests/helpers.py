"""What several test modules share: independent NumPy references and writers of real file formats.

The references compute what snnexp should compute without snnexp, jax or
qwix; the writers make small files in the formats the loaders read (SHD's
HDF5, N-MNIST's binary events), since tests never download anything.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

# ------------------------------------------------------------ quantization


def np_fake_quant(a: np.ndarray, bits: int, axis: int, factor: float = 1.0) -> np.ndarray:
    """Symmetric absmax fake quantization with one scale per slice reduced
    along ``axis``, as qwix defines it: bound qmax + 0.5, values multiplied by
    the reciprocal scale in float32, rounded half to even."""
    qmax = 2 ** (bits - 1) - 1
    absmax = np.max(np.abs(a), axis=axis, keepdims=True).astype(np.float32) * np.float32(factor)
    scale = absmax / np.float32(qmax + 0.5)
    scale = np.where(scale < np.sqrt(np.finfo(np.float32).tiny), 1.0, scale).astype(np.float32)
    return (np_codes(a, scale, qmax) * scale).astype(np.float32)


def np_codes(a: np.ndarray, scale: np.ndarray, qmax: int) -> np.ndarray:
    inv = (np.float32(1.0) / scale).astype(np.float32)
    return np.clip(np.round((a * inv).astype(np.float32)), -qmax - 1, qmax)


# ------------------------------------------------------------ data files


def write_shd(path: Path, times: list, units: list, labels: list, skip: tuple[str, ...] = ()) -> None:
    """Writes an SHD file as the real ones are: ragged float16 times, ragged uint16 units."""
    with h5py.File(path, "w") as f:
        if "spikes/times" not in skip:
            d = f.create_dataset("spikes/times", (len(times),), dtype=h5py.vlen_dtype(np.float16))
            for i, t in enumerate(times):
                d[i] = np.asarray(t, dtype=np.float16)
        if "spikes/units" not in skip:
            d = f.create_dataset("spikes/units", (len(units),), dtype=h5py.vlen_dtype(np.uint16))
            for i, u in enumerate(units):
                d[i] = np.asarray(u, dtype=np.uint16)
        if "labels" not in skip:
            f.create_dataset("labels", data=np.asarray(labels, dtype=np.uint16))
        f.create_dataset("extra/speaker", data=np.zeros(len(labels), dtype=np.uint16))


def write_nmnist_bin(path: Path, events: list[tuple[int, int, int, int]]) -> None:
    """Writes N-MNIST's format: 5 bytes per event, x, y, p in bit 7 then a 23-bit time in us."""
    raw = bytearray()
    for x, y, t, p in events:
        raw += bytes([x, y, (p << 7) | ((t >> 16) & 0x7F), (t >> 8) & 0xFF, t & 0xFF])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes(raw))
