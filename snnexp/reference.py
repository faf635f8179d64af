"""A NumPy simulator of an exported integer network: integer arithmetic only, from the sidecar files alone.

It reads ``integer.npz`` + ``integer.json`` (docs/export.md) and nothing of
snnexp: no model, no JAX, no qwix. Its time loop uses NumPy ``int64``
integers only; floats appear once before it (encoding analog inputs, as the
docs specify) and once after it (the logits of the loss). It is written from
docs/export.md, not from snnexp's JAX forward, so that agreement between the
two (the tests: every spike of every layer at every step) proves both the
docs and the deployed network.

    python -m snnexp.reference EXPORT_DIR            # the network's summary
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

FORMAT, VERSIONS = "snnexp-integer", (1, 2, 3)  # 2: the recurrent codes at their own width; 3: input delays


@dataclass
class Network:
    """An exported integer network: the JSON metadata and the arrays of the npz."""

    meta: dict[str, Any]
    arrays: dict[str, np.ndarray]

    @property
    def profile(self) -> dict[str, Any]:
        """The arithmetic: widths, decay form, overflow and reset rules."""
        return self.meta["profile"]

    def array(self, layer: dict[str, Any], name: str) -> np.ndarray | None:
        """A layer's array as int64 (``unit`` as float32), or None where the layer has none.

        Weight codes are read from their packed form (``weight_packed`` at ``weight_bits``,
        ``recurrent_packed`` at ``recurrent_bits``).
        """
        if name in ("weight", "recurrent"):
            key = layer["arrays"].get(f"{name}_packed")
            if key is None:
                return None
            rows = layer["fan_in"] if name == "weight" else layer["size"]
            bits = layer.get(f"{name}_bits", layer["weight_bits"])  # version 1: one width per layer
            return _unpack(self.arrays[key], bits, rows * layer["size"]).reshape(rows, layer["size"])
        key = layer["arrays"].get(name)
        if key is None:
            return None
        a = self.arrays[key]
        return a.astype(np.float32) if name == "unit" else a.astype(np.int64)


def _unpack(packed: np.ndarray, bits: int, n: int) -> np.ndarray:
    """``n`` two's-complement codes of ``bits`` bits, least significant bit first in bytes and codes."""
    stream = np.unpackbits(np.asarray(packed, np.uint8), bitorder="little")[: n * bits]
    u = (stream.reshape(n, bits).astype(np.int64) * (1 << np.arange(bits, dtype=np.int64))).sum(axis=1)
    return np.where(u >= 1 << (bits - 1), u - (1 << bits), u)


def load(directory: Path) -> Network:
    """Reads ``integer.json`` and ``integer.npz`` from ``directory``.

    Raises:
        ValueError: not an snnexp integer sidecar, or a version this reader does not know.
    """
    directory = Path(directory)
    meta = json.loads((directory / "integer.json").read_text())
    if meta.get("format") != FORMAT or meta.get("version") not in VERSIONS:
        raise ValueError(f"{directory}: format {meta.get('format')!r} version {meta.get('version')!r}; "
                         f"this reader knows {FORMAT!r} versions {VERSIONS}")
    with np.load(directory / "integer.npz") as z:
        arrays = {k: z[k] for k in z.files}
    return Network(meta, arrays)


def encode(net: Network, x: np.ndarray) -> np.ndarray:
    """Input codes: spikes as they are; analog ``clip(rint(x / scale), -q, q)`` in float32, ``q = 2**(bits-1) - 1``."""
    x = np.asarray(x, np.float32)
    inp = net.meta["input"]
    if inp["binary"]:
        return x.astype(np.int64)
    q = 2 ** (inp["bits"] - 1) - 1
    return np.clip(np.rint(x / np.float32(inp["scale"])), -q, q).astype(np.int64)


def delayed(net: Network, codes: np.ndarray) -> np.ndarray:
    """What layer 0 receives: ``[B, T, F]`` codes -> ``[B, T, D * F]``, row ``j * F + f`` input ``f`` at ``t - j * s``.

    ``D = input.delays``, ``s = input.delay_stride`` (version 3; 1 and 1 before it, the codes unchanged);
    a step before the sequence starts reads 0.
    """
    inp = net.meta["input"]
    taps, stride = inp.get("delays", 1), inp.get("delay_stride", 1)
    b, t, f = codes.shape
    out = np.zeros((b, t, taps * f), codes.dtype)
    for j in range(taps):
        lag = j * stride
        if lag < t:
            out[:, lag:, j * f:(j + 1) * f] = codes[:, :t - lag]
    return out


def _fit(x: np.ndarray, bits: int, rule: str) -> tuple[np.ndarray, int]:
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    n = int(np.count_nonzero((x < lo) | (x > hi)))
    if rule == "saturate":
        return np.minimum(np.maximum(x, lo), hi), n
    return ((x - lo) % (1 << bits)) + lo, n


def _leak(v: np.ndarray, d: np.ndarray, prof: dict[str, Any]) -> np.ndarray:
    k = prof["decay_bits"]
    if prof["decay"] == "multiply":
        return np.sign(v) * ((np.abs(v) * d) >> k)
    step = v >> d  # arithmetic shift: floor division by 2**dash
    step = np.where((step == 0) & (v != 0), np.sign(v), step)
    return v - step


def run(net: Network, codes: np.ndarray) -> dict[str, Any]:
    """Runs input codes ``[B, T, F]`` (``encode``'s) through the network, its delay line (``delayed``) first.

    Returns:
        ``{"out": [B, T, C] readout membrane, "spikes": [per hidden layer [T, B, H] int8],
        "overflow": [per layer {"accumulator", "current", "membrane"}], "accumulator_peak": [per layer]}``.
    """
    prof = net.profile
    layers = net.meta["layers"]
    codes = delayed(net, np.asarray(codes, np.int64))
    b, t, _ = codes.shape
    acc_bits, sbits = prof["accumulator_bits"], prof["state_bits"]
    acc_rule = prof["current_overflow"] or prof["overflow"]
    shift = prof["shift"]
    p = [{name: net.array(layer, name) for name in
          ("weight", "recurrent", "weight_shift", "recurrent_shift", "bias", "threshold", "beta", "alpha")}
         for layer in layers]
    state = [{"v": np.zeros((b, layer["size"]), np.int64), "i": np.zeros((b, layer["size"]), np.int64)}
             for layer in layers]
    overflow = [{"accumulator": 0, "current": 0, "membrane": 0} for _ in layers]
    peak = [0] * len(layers)
    spikes = [np.zeros((t, b, layer["size"]), np.int8) for layer in layers[:-1]]
    out = np.zeros((b, t, layers[-1]["size"]), np.int64)

    def accumulate(j: int, raw: np.ndarray) -> np.ndarray:
        raw = raw + p[j]["bias"]
        peak[j] = max(peak[j], int(np.max(np.abs(raw), initial=0)))
        a, n = _fit(raw, acc_bits, acc_rule)
        overflow[j]["accumulator"] += n
        return a << shift

    for step in range(t):
        x = codes[:, step, :]
        for j, layer in enumerate(layers):
            w, st = p[j], state[j]
            kind = layer["kind"]
            raw = (x @ w["weight"]) << w["weight_shift"]
            fired = (st["v"] > w["threshold"]).astype(np.int64) if kind != "li" else None
            if layer["recurrent"]:
                raw = raw + ((fired @ w["recurrent"]) << w["recurrent_shift"])
            a = accumulate(j, raw)
            if kind == "li":
                st["v"], n = _fit(_leak(st["v"], w["beta"], prof) + a, sbits, prof["overflow"])
                overflow[j]["membrane"] += n
                out[:, step, :] = st["v"]
                continue
            v, reset = st["v"], fired * w["threshold"]
            if kind == "cuba_lif":
                v = v - reset if prof["reset"] == "subtract" else v * (1 - fired)
                st["i"], n = _fit(_leak(st["i"], w["alpha"], prof) + a, sbits, acc_rule)
                overflow[j]["current"] += n
                v = _leak(v, w["beta"], prof) + st["i"]
            else:  # lif, if: leak (lif only), then the subtractive reset, then the input
                if prof["reset"] == "zero":
                    v = v * (1 - fired)
                if kind == "lif":
                    v = _leak(v, w["beta"], prof)
                if prof["reset"] == "subtract":
                    v = v - reset
                v = v + a
            st["v"], n = _fit(v, sbits, prof["overflow"])
            overflow[j]["membrane"] += n
            spikes[j][step] = fired
            x = fired
    return {"out": out, "spikes": spikes, "overflow": overflow, "accumulator_peak": peak}


def predict(net: Network, out: np.ndarray) -> np.ndarray:
    """The class per sample, ties to the lowest class; ``out``: the readout membrane ``[B, T, C]``.

    ``readout.reduce`` says how the steps count: ``sum`` (``argmax_c sum_t U``),
    ``max`` (``argmax_c max_t U``) or ``last`` (``argmax_c U[T-1]``).
    """
    u = np.asarray(out, np.int64)
    reduce = net.meta["readout"].get("reduce", "sum")
    scores = u.max(axis=1) if reduce == "max" else u[:, -1] if reduce == "last" else u.sum(axis=1)
    return np.argmax(scores, axis=-1)


def main(argv: list[str] | None = None) -> int:
    """Prints an exported network's layers and arithmetic."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m snnexp.reference EXPORT_DIR", file=sys.stderr)
        return 2
    net = load(Path(args[0]))
    print(f"profile {net.profile['name']}: {json.dumps(net.profile)}")
    for layer in net.meta["layers"]:
        rec = f", {layer.get('recurrent_qtype', layer['weight_qtype'])} recurrent" if layer["recurrent"] else ""
        print(f"  {layer['name']}: {layer['kind']} {layer['fan_in']}->{layer['size']}"
              f"{' recurrent' if layer['recurrent'] else ''}, {layer['weight_qtype']} weights{rec}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
