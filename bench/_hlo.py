"""What runs inside the loops of a compiled XLA program (``compiled.as_text()``).

Used by ``bench/perf.py``'s ``hlo`` measurement to check, in the optimized HLO
of ``snnexp.train.train_steps``, that the time loops (``while`` with a trip
count of T) hold only the neuron dynamics: no matmul and no quantization op
(the weight fake-quant of QAT/QT runs once per optimizer step, outside them).
"""

from __future__ import annotations

import re
from collections import Counter

_COMP = re.compile(r"^(ENTRY )?%(\S+) .*\{$")
_OP = re.compile(r"= \S+ ([a-z][a-z0-9\-]*)\(")
_CALLED = re.compile(r"(?:calls|body|condition|to_apply)=%([\w.\-]+)")
_TRIP = re.compile(r'known_trip_count":\{"n":"(\d+)"')
_BODY = re.compile(r"body=%([\w.\-]+)")


def computations(text: str) -> dict[str, list[str]]:
    """HLO computation name -> its instruction lines."""
    comps: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        m = _COMP.match(line)
        if m:
            current = m.group(2)
            comps[current] = []
        elif line.startswith("}"):
            current = None
        elif current is not None and line.strip():
            comps[current].append(line)
    return comps


def instructions(comps: dict[str, list[str]], name: str, seen: set[str] | None = None) -> list[tuple[str, str]]:
    """``(opcode, line)`` of a computation and of everything it calls (fusions, nested loops)."""
    seen = set() if seen is None else seen
    if name in seen or name not in comps:
        return []
    seen.add(name)
    out = []
    for line in comps[name]:
        m = _OP.search(line)
        out.append((m.group(1) if m else "?", line))
        for callee in _CALLED.findall(line):
            out += instructions(comps, callee, seen)
    return out


def _is_quant(line: str) -> bool:
    # fake quantization rounds (round-nearest-even) and/or produces 8-bit integer codes
    return "round-nearest" in line or bool(re.search(r"= s8\[", line)) or " round-nearest-even(" in line


def loop_report(text: str, time_steps: int) -> dict[str, int]:
    """Counts of dots and quantization ops inside the time loops and inside the step loop.

    Args:
        text: ``jax.jit(...).lower(...).compile().as_text()``.
        time_steps: the trip count that marks a time loop (T).

    Returns:
        ``time_loops``, ``dots_in_time_loops``, ``quant_ops_in_time_loops``,
        ``instructions_in_time_loops``, ``dots_in_step``, ``quant_ops_in_step``
        (the step loop: the scan over batches, everything it contains).
    """
    comps = computations(text)
    rep = Counter()
    for lines in comps.values():
        for line in lines:
            if " while(" not in line:
                continue
            trip = _TRIP.search(line)
            body = _BODY.search(line)
            if not body:
                continue
            ops = instructions(comps, body.group(1))
            n = int(trip.group(1)) if trip else -1
            dots = sum(op in ("dot", "convolution") or "dot(" in ln for op, ln in ops)
            quant = sum(_is_quant(ln) for _, ln in ops)
            if n == time_steps:
                rep["time_loops"] += 1
                rep["dots_in_time_loops"] += dots
                rep["quant_ops_in_time_loops"] += quant
                rep["instructions_in_time_loops"] += len(ops)
            elif dots > rep["dots_in_step"]:  # the outermost non-time loop: the scan over batches
                rep["dots_in_step"] = dots
                rep["quant_ops_in_step"] = quant
    for key in ("time_loops", "dots_in_time_loops", "quant_ops_in_time_loops", "instructions_in_time_loops",
                "dots_in_step", "quant_ops_in_step"):
        rep.setdefault(key, 0)
    return dict(rep)
