"""The Triton kernel of :mod:`effnet.kernels.dwconv` (imported only where Triton is installed).

No ``from __future__ import annotations`` here: Triton reads the ``tl.constexpr`` annotations.
The kernel calls only core builtins (``tl.full``, ``tl.reduce`` with the standard sum's combine
function), never the ``@triton.jit`` helpers of ``triton.language.standard`` (``tl.zeros``,
``tl.sum``): those are compiled or interpreted as fixed when Triton was first imported, and the
interpreter cannot call compiled ones, which would tie the interpreter to a process started
with ``TRITON_INTERPRET=1``.
"""

import triton.language as tl

ACT_IDENTITY, ACT_SILU, ACT_RELU, ACT_RELU6 = 0, 1, 2, 3


def dwconv_act_squeeze_kernel(
        x_ptr, w_ptr, b_ptr, y_ptr, sums_ptr,
        C, H, W, OH, OW, tiles_per_image,
        sxn, sxc, sxh, sxw, syn, syc, syh, syw,
        STRIDE: tl.constexpr, PAD_TOP: tl.constexpr, PAD_LEFT: tl.constexpr, K: tl.constexpr,
        ACT: tl.constexpr, SQUEEZE: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    """One program: ``BLOCK_P`` output positions of one image times ``BLOCK_C`` channels.

    Channels are the fastest axis of a channels_last tensor, so each tap's load of a
    ``BLOCK_P x BLOCK_C`` tile reads ``BLOCK_P`` contiguous runs. Accumulates in fp32, adds the
    bias, activates, stores in ``y``'s dtype and, with ``SQUEEZE``, adds the tile's per-channel
    sum of the activation to ``sums[n, c]`` (fp32).
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
    acc = tl.full((BLOCK_P, BLOCK_C), 0.0, tl.float32)
    for kh in tl.static_range(K):
        ih = oh * STRIDE - PAD_TOP + kh
        row_ok = mask_p & (ih >= 0) & (ih < H)
        for kw in tl.static_range(K):
            iw = ow * STRIDE - PAD_LEFT + kw
            ok = row_ok & (iw >= 0) & (iw < W)
            pointers = x_image + (ih * sxh + iw * sxw)[:, None] + (offs_c * sxc)[None, :]
            values = tl.load(pointers, mask=ok[:, None] & mask_c[None, :], other=0.0)
            taps = tl.load(w_ptr + offs_c * (K * K) + (kh * K + kw), mask=mask_c, other=0.0)
            acc += values.to(tl.float32) * taps.to(tl.float32)[None, :]
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
        tl.atomic_add(sums_ptr + n * C + offs_c, partial, mask=mask_c)
