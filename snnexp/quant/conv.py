"""A convolution as one ``dot_general`` over patches: the form in which qwix takes every recipe.

qwix 0.1.8 quantizes ``lax.conv_general_dilated`` only when the activation
and weight qtypes are equal; its ``dot_general`` path takes them all. A
workaround for a qwix limitation, so it lives with the rest of the qwix code.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp


def conv_as_dot_general(
    lhs: jax.Array,
    rhs: jax.Array,
    window_strides: Sequence[int],
    padding: str | Sequence[tuple[int, int]],
    lhs_dilation: Sequence[int] | None = None,
    rhs_dilation: Sequence[int] | None = None,
    dimension_numbers: jax.lax.ConvDimensionNumbers | None = None,
    feature_group_count: int = 1,
    precision: jax.lax.PrecisionLike = None,
    preferred_element_type: jnp.dtype | None = None,
    out_sharding: object = None,
) -> jax.Array:
    """A 2-D NHWC convolution computed as ONE ``lax.dot_general`` over patches.

    A drop-in ``conv_general_dilated`` for ``nnx.Conv`` (as its
    ``conv_general_dilated=`` argument). The ``k x k`` patches are cut by
    slicing (not by ``lax.conv_general_dilated_patches``, itself a convolution)
    into ``[N, H', W', kh, kw, C_in]`` and contracted with the untouched
    ``[kh, kw, C_in, C_out]`` kernel. Why: qwix 0.1.8 quantizes a convolution
    only when its activation and weight qtypes are equal (``w8a8``; int4 or
    ternary weights under int8 activations and weights-only recipes fail),
    while its ``dot_general`` takes every recipe. The kernel reaches
    ``dot_general`` as the module's own parameter, so qwix recognises it as
    the weight (one scale per output channel); activations get one dynamic
    scale per output position (per patch) instead of one per image.

    Args:
        lhs: images ``[N, H, W, C_in]``.
        rhs: kernel ``[kh, kw, C_in, C_out]`` (or qwix's quantized stand-in).
        window_strides: ``(s_h, s_w)``.
        padding: ``"SAME"``, ``"VALID"`` or ``[(lo, hi), (lo, hi)]``.
        lhs_dilation: must be 1 (not supported otherwise).
        rhs_dilation: must be 1 (not supported otherwise).
        dimension_numbers: must be NHWC/HWIO/NHWC, what ``nnx.Conv`` passes.
        feature_group_count: must be 1.
        precision: passed to ``dot_general``.
        preferred_element_type: passed to ``dot_general``.
        out_sharding: unused (single device).

    Returns:
        ``[N, H', W', C_out]``.
    """
    del out_sharding
    if lhs.ndim != 4 or len(rhs.shape) != 4:
        raise NotImplementedError(f"conv_as_dot_general: 2-D NHWC only, got input {lhs.shape}, kernel {rhs.shape}")
    if any(d != 1 for d in (*(lhs_dilation or (1, 1)), *(rhs_dilation or (1, 1)))) or feature_group_count != 1:
        raise NotImplementedError("conv_as_dot_general: dilation and feature groups are not supported")
    if dimension_numbers is not None:
        nhwc = jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, ("NHWC", "HWIO", "NHWC"))
        if tuple(dimension_numbers) != tuple(nhwc):
            raise NotImplementedError(f"conv_as_dot_general: NHWC/HWIO only, got {dimension_numbers}")
    kh, kw = rhs.shape[0], rhs.shape[1]
    sh, sw = window_strides
    _, h, w, _ = lhs.shape
    pads = jax.lax.padtype_to_pads((h, w), (kh, kw), (sh, sw), padding) if isinstance(padding, str) else padding
    (t, b), (left, r) = pads
    xp = jnp.pad(lhs, ((0, 0), (t, b), (left, r), (0, 0)))
    oh, ow = (h + t + b - kh) // sh + 1, (w + left + r - kw) // sw + 1
    rows = [
        jnp.stack([xp[:, i:i + sh * (oh - 1) + 1:sh, j:j + sw * (ow - 1) + 1:sw, :] for j in range(kw)], axis=3)
        for i in range(kh)
    ]
    patches = jnp.stack(rows, axis=3)  # [N, oh, ow, kh, kw, C_in]
    return jax.lax.dot_general(patches, rhs, (((3, 4, 5), (0, 1, 2)), ((), ())), precision=precision,
                               preferred_element_type=preferred_element_type)
