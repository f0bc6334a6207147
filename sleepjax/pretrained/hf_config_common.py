"""Helpers shared by the ``config.json`` mappings of every supported family."""

from __future__ import annotations

from typing import Any, Mapping


def refuse(key: str, value, why: str) -> ValueError:
    """The error for a config key whose value sleepjax does not compute (names the key)."""
    return ValueError(f"config.json: {key}={value!r} is not supported by sleepjax ({why})")


def rope_theta_and_fraction(text: Mapping[str, Any], default_theta: float,
                            default_fraction: float) -> tuple[float, float]:
    """``(rope_theta, partial_rotary_factor)`` of a config: transformers 5's ``rope_parameters``
    or the legacy top-level ``rope_theta`` / ``rope_scaling`` keys (as in transformers, a
    non-empty ``rope_scaling`` takes the place of ``rope_parameters``). Anything but unscaled
    RoPE (``rope_type`` "default") in either is refused, naming the key."""
    sources = {key: text.get(key) or {} for key in ("rope_scaling", "rope_parameters")}
    for key, rope in sources.items():
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type != "default":
            raise refuse(f"{key}.rope_type", rope_type, "only unscaled RoPE ('default')")
    rope = sources["rope_scaling"] or sources["rope_parameters"]
    theta = rope.get("rope_theta", text.get("rope_theta", default_theta))
    fraction = rope.get("partial_rotary_factor", text.get("partial_rotary_factor", default_fraction))
    return float(theta), float(fraction)
