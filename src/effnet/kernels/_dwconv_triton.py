"""The Triton kernel of :mod:`effnet.kernels.dwconv` (imported only where Triton is installed).

No ``from __future__ import annotations`` here: Triton reads the ``tl.constexpr`` annotations.
The kernel calls only core builtins (``tl.full``, ``tl.reduce`` with the standard sum's combine
function), never the ``@triton.jit`` helpers of ``triton.language.standard`` (``tl.zeros``,
``tl.sum``) nor helpers of its own: those are compiled or interpreted as fixed when they were
wrapped, and the interpreter cannot call compiled ones, which would tie the interpreter to a
process started with ``TRITON_INTERPRET=1``. Hence the activation written out twice.
"""

import triton.language as tl


def dwconv_act_squeeze_kernel(
        x_ptr, in_bias_ptr, w_ptr, b_ptr, y_ptr, sums_ptr,
        C, H, W, OH, OW, tiles_per_image,
        sxn, sxc, sxh, sxw, syn, syc, syh, syw,
        STRIDE: tl.constexpr, PAD_TOP: tl.constexpr, PAD_LEFT: tl.constexpr, K: tl.constexpr,
        IN_BIAS: tl.constexpr, IN_ACT: tl.constexpr, ACT: tl.constexpr, SQUEEZE: tl.constexpr,
        BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    """One program: ``BLOCK_P`` output positions of one image times ``BLOCK_C`` channels.

    Channels are the fastest axis of a channels_last tensor, so each tap's load of a
    ``BLOCK_P x BLOCK_C`` tile reads ``BLOCK_P`` contiguous runs. Each loaded value first gets
    the input bias and activation (``IN_BIAS``, ``IN_ACT``: the previous conv's epilogue, done
    here instead of in a pass of its own; padding stays zero). Accumulates in fp32, adds the
    bias, activates (``ACT``: 0 identity, 1 SiLU, 2 ReLU, 3 ReLU6), stores in ``y``'s dtype and,
    with ``SQUEEZE``, adds the tile's per-channel sum of the stored activation to ``sums[n, c]``
    (fp32).
    """
    pid_p = tl.program_id(0)
    pid_c = tl.program_id(1)
    n = pid_p // tiles_per_image
    tile = pid_p % tiles_per_image
    offs_p = tile * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_p = offs_p < OH * OW
    mask_c = offs_c < C
    oh = offs_p // OW
    ow = offs_p % OW
    x_image = x_ptr + n.to(tl.int64) * sxn
    if IN_BIAS:
        in_bias = tl.load(in_bias_ptr + offs_c, mask=mask_c, other=0.0).to(tl.float32)
    acc = tl.full((BLOCK_P, BLOCK_C), 0.0, tl.float32)
    for kh in tl.static_range(K):
        ih = oh * STRIDE - PAD_TOP + kh
        row_ok = mask_p & (ih >= 0) & (ih < H)
        for kw in tl.static_range(K):
            iw = ow * STRIDE - PAD_LEFT + kw
            ok = (row_ok & (iw >= 0) & (iw < W))[:, None] & mask_c[None, :]
            pointers = x_image + (ih * sxh + iw * sxw)[:, None] + (offs_c * sxc)[None, :]
            values = tl.load(pointers, mask=ok, other=0.0).to(tl.float32)
            if IN_BIAS:
                values = tl.where(ok, values + in_bias[None, :], 0.0)
            if IN_ACT == 1:
                values = values / (1.0 + tl.exp(-values))
            elif IN_ACT == 2:
                values = tl.maximum(values, 0.0)
            elif IN_ACT == 3:
                values = tl.minimum(tl.maximum(values, 0.0), 6.0)
            taps = tl.load(w_ptr + offs_c * (K * K) + (kh * K + kw), mask=mask_c, other=0.0)
            acc += values * taps.to(tl.float32)[None, :]
    acc += tl.load(b_ptr + offs_c, mask=mask_c, other=0.0).to(tl.float32)[None, :]
    if ACT == 1:
        acc = acc / (1.0 + tl.exp(-acc))
    elif ACT == 2:
        acc = tl.maximum(acc, 0.0)
    elif ACT == 3:
        acc = tl.minimum(tl.maximum(acc, 0.0), 6.0)
    out = acc.to(y_ptr.dtype.element_ty)
    mask = mask_p[:, None] & mask_c[None, :]
    y_pointers = y_ptr + n.to(tl.int64) * syn + (oh * syh + ow * syw)[:, None] + (offs_c * syc)[None, :]
    tl.store(y_pointers, out, mask=mask)
    if SQUEEZE:
        # the sum of what was stored (rounded to y's dtype), as the eager mean would see it
        partial = tl.reduce(tl.where(mask, out.to(tl.float32), 0.0), 0, tl.standard._sum_combine)
        # relaxed: nothing here reads the sums (acq_rel would fence and invalidate L1 per program)
        tl.atomic_add(sums_ptr + n * C + offs_c, partial, mask=mask_c, sem="relaxed")
