"""What a run prints at its end: the results table."""

from __future__ import annotations

from typing import Any


def results_table(result: dict[str, Any]) -> str:
    """Formats the final console table of a run from its metrics.

    Args:
        result: the run's ``metrics.json`` content; keys an older run lacks
            (``weight_bytes_packed``, the AC/MAC split) print as ``-``.

    Returns:
        The table, one ``| name | value |`` row per metric.
    """

    def fmt(v: Any) -> str:
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v)

    rows = [
        ("recipe / mode", f"{result['recipe']} / {result['mode']}"),
        ("fp32 accuracy", fmt(result["fp32_accuracy"])),
        ("quant accuracy", fmt(result["quant_accuracy"])),
        ("accuracy drop", fmt(result["accuracy_drop"])),
        ("weight bytes fp32", fmt(result["weight_bytes_fp32"])),
        ("weight bytes quant", fmt(result["weight_bytes_quant"])),
        ("weight bytes packed", fmt(result.get("weight_bytes_packed"))),
        ("bits per weight", fmt(result["bits_per_weight"])),
        ("spike rate (mean)", fmt(result["spike_rate"]["mean"])),
        ("synaptic ACs / sample", fmt(result.get("synaptic_acs_per_sample"))),
        ("synaptic MACs / sample", fmt(result.get("synaptic_macs_per_sample"))),
        ("synaptic ops / sample", fmt(result["synaptic_ops_per_sample"])),
        *_integer_rows(result, fmt),
        *_fp32_cache_rows(result),
        ("train time (s)", fmt(result["train_time_s"])),
        ("steps / s", fmt(result["steps_per_s"])),
    ]
    width = max(len(k) for k, _ in rows)
    line = "+" + "-" * (width + 2) + "+" + "-" * 24 + "+"
    body = "\n".join(f"| {k:<{width}} | {v:<22} |" for k, v in rows)
    return f"{line}\n{body}\n{line}"


def _integer_rows(result: dict[str, Any], fmt: Any) -> list[tuple[str, str]]:
    """The rows of a run with integer neuron state (``hardware=int*``); none for float state."""
    if result.get("hardware", "float") == "float":
        return []
    needed = result.get("accumulator_bits_needed") or {}
    return [
        ("hardware", str(result["hardware"])),
        ("float-state accuracy", fmt(result.get("float_state_accuracy"))),
        ("QAT spike agreement", fmt(result.get("qat_spike_agreement"))),
        ("integer memory (bits)", fmt((result.get("integer_memory_bits") or {}).get("total"))),
        ("accumulator bits", f"{max(needed.values(), default=0)} of {result.get('accumulator_bits')}"),
        ("overflow events", fmt(result.get("overflow_events"))),
    ]


def _fp32_cache_rows(result: dict[str, Any]) -> list[tuple[str, str]]:
    """Whether the fp32 network was trained here or reused from the fp32 cache; none with the cache off."""
    cached = result.get("fp32_cache")
    if not cached:
        return []
    return [("fp32 network", "reused from the cache" if cached["hit"] else "trained and cached")]
