"""The integer sidecar: ``integer.npz`` (arrays) plus ``integer.json`` (everything else), schema in docs/export.md.

What a chip or a simulator needs to run the integer network exactly and
that NIR cannot hold: weight codes (plain and packed at their bit width),
per-neuron thresholds, decays and biases as integers, the profile's widths
and overflow rules, the input encoding. ``snnexp.reference`` runs it.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np

from snnexp.hardware.integer import IntegerNetwork, code_bits

FORMAT = "snnexp-integer"
VERSION = 3  # 2: a recurrent matrix packed at its own qtype (recurrent_qtype, recurrent_bits); 3: input.delays


def pack(codes: np.ndarray, bits: int) -> np.ndarray:
    """Two's-complement codes packed at ``bits`` bits each, row-major, least significant bit first.

    Args:
        codes: integer codes of any shape, each in ``[-2**(bits-1), 2**(bits-1) - 1]``.
        bits: the width (2 for ternary codes -1, 0, 1).

    Returns:
        ``uint8 [ceil(codes.size * bits / 8)]``; the last byte is zero-padded.
    """
    u = np.asarray(codes, np.int64).ravel() & (2**bits - 1)
    bit_planes = (u[:, None] >> np.arange(bits)) & 1
    return np.packbits(bit_planes.astype(np.uint8).ravel(), bitorder="little")


def unpack(packed: np.ndarray, bits: int, shape: tuple[int, ...]) -> np.ndarray:
    """The inverse of ``pack``: int32 codes of ``shape``."""
    n = int(np.prod(shape))
    flat = np.unpackbits(np.asarray(packed, np.uint8), bitorder="little")[: n * bits].reshape(n, bits)
    u = (flat.astype(np.int64) << np.arange(bits)).sum(axis=1)
    return np.where(u >= 2 ** (bits - 1), u - 2**bits, u).astype(np.int32).reshape(shape)


def _storage(bits: int) -> type:
    return np.int8 if bits <= 8 else np.int16


def write(net: IntegerNetwork, out_dir: Path, *, dt: float, source: dict[str, Any] | None = None) -> list[Path]:
    """Writes ``integer.npz`` and ``integer.json`` for ``net`` into ``out_dir``; returns their paths.

    Args:
        net: the integer network.
        out_dir: the directory (made if missing).
        dt: the time step in seconds that the NIR graph states (recorded for consumers).
        source: where the network came from (run directory, recipe, mode), recorded as is.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, np.ndarray] = {}
    layers = []
    for i, layer in enumerate(net.layers):
        key = f"layer{i}"
        entry: dict[str, Any] = {
            "name": layer.name, "kind": layer.kind, "size": layer.size, "fan_in": int(layer.weight.shape[0]),
            "recurrent": layer.recurrent is not None, "weight_qtype": layer.weight_qtype,
            "weight_bits": code_bits(layer.weight_qtype),
        }
        if layer.recurrent is not None:
            entry.update(recurrent_qtype=layer.recurrent_qtype, recurrent_bits=code_bits(layer.recurrent_qtype))
        entry["arrays"] = {}
        named = {"weight": layer.weight, "recurrent": layer.recurrent}
        for name, codes in named.items():
            if codes is None:
                continue
            bits = entry[f"{name}_bits"]
            arrays[f"{key}.{name}"] = codes.astype(_storage(bits))
            arrays[f"{key}.{name}_packed"] = pack(codes, bits)
            entry["arrays"][name] = f"{key}.{name}"
            entry["arrays"][f"{name}_packed"] = f"{key}.{name}_packed"
        shifts = {"weight_shift": layer.weight_shift, "recurrent_shift": layer.recurrent_shift}
        for name, value in shifts.items():
            if name == "weight_shift" or layer.recurrent is not None:
                arrays[f"{key}.{name}"] = (np.zeros(layer.size, np.int32) if value is None else value).astype(np.int32)
                entry["arrays"][name] = f"{key}.{name}"
        for name in ("bias", "threshold", "beta", "alpha", "unit"):
            value = getattr(layer, name)
            if value is None or (name == "threshold" and layer.kind == "li"):
                continue
            arrays[f"{key}.{name}"] = value.astype(np.float32 if name == "unit" else np.int32)
            entry["arrays"][name] = f"{key}.{name}"
        layers.append(entry)
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "profile": dataclasses.asdict(net.profile),
        "input": {"binary": net.input_binary, "scale": net.input_scale, "bits": net.profile.input_bits,
                  "delays": net.input_delays, "delay_stride": net.delay_stride},
        "steps": net.steps,
        "dt": dt,
        "readout": {"reduce": {"mean": "sum", "max": "max", "last": "last"}[net.readout],
                    "decision": {"mean": "argmax_c sum_t U[t, c]", "max": "argmax_c max_t U[t, c]",
                                 "last": "argmax_c U[T-1, c]"}[net.readout] + " (ties: lowest class)",
                    "logit_scale": float(net.layers[-1].unit[0]) / 2**net.profile.shift},
        "threshold_clipped": net.threshold_clipped,
        "layers": layers,
        "source": source or {},
    }
    npz, js = out_dir / "integer.npz", out_dir / "integer.json"
    np.savez(npz, **arrays)
    js.write_text(json.dumps(meta, indent=2) + "\n")
    return [npz, js]
