"""K-quants: 256-value super-blocks of 16 or 32-value sub-blocks, each with its own 6- or 8-bit
scale (and minimum) quantized against one float16 super-scale.

The searches are ggml's reference ones (``quantize_row_q{4,5,6}_K_ref`` in ggml-quants.c, which
``llama-quantize`` runs when no importance matrix is given): ``make_qkx2_quants`` fits a scale and
a minimum per sub-block by trying ~20 candidate scales and keeping the one with the smallest
weighted squared error; ``make_qx_quants`` fits a symmetric scale the same way. They run here on
all sub-blocks at once, with sub-blocks as *columns* (arrays shaped ``(values, sub-blocks)``): each
C loop over a sub-block's values becomes a loop over rows, and the sums keep the C loop's order,
which is what makes the bytes identical.
"""

from __future__ import annotations

import gguf
import numpy as np

from llamashare.quant import k_kernels
from llamashare.quant.qtype import F32, QuantType, first_absmax, fp16, fp16_bytes, fp16_field, nearest_int

T = gguf.GGMLQuantizationType
QK_K = 256
GROUP_MAX_EPS = k_kernels.GROUP_MAX_EPS


def _divide(a: np.ndarray | np.float32, b: np.ndarray) -> np.ndarray:
    """a/b where b != 0, else 0 — for columns whose result the C code never computes."""
    out = np.zeros(np.broadcast_shapes(np.shape(a), np.shape(b)), dtype=F32)
    np.divide(a, b, out=out, where=b != 0)
    return out


def make_qkx2_quants(
    b: np.ndarray, sub: int, nmax: int, rmin: float, nstep: int, rms_weights: bool, use_mad: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ggml's make_qkx2_quants for every ``sub``-value sub-block of the super-blocks ``b`` (n, 256):
    levels (n, 256) uint8, scale and ``the_min`` (n, 256/sub).

    Per sub-block: start from the min/max grid, then try iscale = (nmax + rmin + 0.1·is)/(max -
    min) for is = 0..nstep, fit scale and min by weighted least squares for each candidate's
    levels, keep strictly better ones. Compiled (k_kernels.qkx2: one sub-block's values stay in
    cache through every candidate)."""
    n, m = b.shape[0], QK_K // sub
    levels = np.empty((n, QK_K), dtype=np.uint8)
    scales, mins = np.empty((n, m), dtype=F32), np.empty((n, m), dtype=F32)
    k_kernels.qkx2(
        np.ascontiguousarray(b, dtype=F32),
        sub,
        nmax,
        F32(rmin),
        F32(0.1),
        nstep,
        rms_weights,
        use_mad,
        levels,
        scales,
        mins,
    )
    return levels, scales, mins


def make_qx_quants(b: np.ndarray, sub: int, nmax: int) -> tuple[np.ndarray, np.ndarray]:
    """ggml's make_qx_quants (rmse_type 1: weights x², no importance matrix) for every
    ``sub``-value sub-block of the super-blocks ``b`` (n, 256): levels L + nmax (n, 256) uint8
    and the signed scale (n, 256/sub), ``scale·(L - nmax)`` ≈ x. Per sub-block:
    iscale = -(nmax + 0.1·is)/max for is = -9..9, the weighted least-squares scale of each
    candidate's levels, the best kept. Compiled (k_kernels.qx)."""
    n, m = b.shape[0], QK_K // sub
    levels = np.empty((n, QK_K), dtype=np.uint8)
    scales = np.empty((n, m), dtype=F32)
    k_kernels.qx(np.ascontiguousarray(b, dtype=F32), sub, nmax, levels, scales)
    return levels, scales


def _pack_scales_k4(ls: np.ndarray, lm: np.ndarray) -> np.ndarray:
    """8 six-bit scales and 8 six-bit mins per super-block (n, 8) → ggml's 12-byte packing."""
    out = np.empty((ls.shape[0], 12), dtype=np.uint8)
    out[:, 0:4] = ls[:, :4] | ((ls[:, 4:] >> 4) << 6)
    out[:, 4:8] = lm[:, :4] | ((lm[:, 4:] >> 4) << 6)
    out[:, 8:12] = (ls[:, 4:] & 0x0F) | ((lm[:, 4:] & 0x0F) << 4)
    return out


def _unpack_scales_k4(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ggml's ``get_scale_min_k4`` for all 8 sub-blocks: (n, 12) → scales (n, 8), mins (n, 8)."""
    sc = np.concatenate([s[:, 0:4] & 63, (s[:, 8:12] & 0x0F) | ((s[:, 0:4] >> 6) << 4)], axis=1)
    mn = np.concatenate([s[:, 4:8] & 63, (s[:, 8:12] >> 4) | ((s[:, 4:8] >> 6) << 4)], axis=1)
    return sc, mn


class Q4_K(QuantType, ggml=T.Q4_K):
    """Q4_K: 8 sub-blocks of 32, 4-bit levels, 6-bit scale and min each. Q5_K adds a fifth bit."""

    nmax, rmin, nstep = 15, -1.0, 20
    fp16_fields = (0, 2)

    @classmethod
    def _levels(cls, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The shared part of Q4_K and Q5_K: (d, dmin, packed scales, levels (n, 256))."""
        b = np.ascontiguousarray(b, dtype=F32)
        levels, scales, mins = make_qkx2_quants(b, 32, cls.nmax, cls.rmin, cls.nstep, rms_weights=True)
        max_scale = np.maximum(scales.max(axis=1), F32(0))
        max_min = np.maximum(mins.max(axis=1), F32(0))
        inv_scale = _divide(F32(63), max_scale)
        inv_min = _divide(F32(63), max_min)
        # C: uint8_t ls = nearest_int(...) wraps negatives, then MIN(63, ls)
        ls = np.minimum(nearest_int(inv_scale[:, None] * scales) & 0xFF, 63).astype(np.uint8)
        lm = np.minimum(nearest_int(inv_min[:, None] * mins) & 0xFF, 63).astype(np.uint8)
        d = max_scale / F32(63)
        dmin = max_min / F32(63)
        # second pass: re-round every value against the scales as stored
        k_kernels.relevel(b, 32, fp16(d)[:, None] * ls, fp16(dmin)[:, None] * lm, 0, cls.nmax, levels)
        return d, dmin, _pack_scales_k4(ls, lm), levels

    @classmethod
    def _quantize(cls, b: np.ndarray) -> np.ndarray:
        d, dmin, scales, L = cls._levels(b)
        quads = L.reshape(-1, 4, 2, 32)
        qs = (quads[:, :, 0] | (quads[:, :, 1] << 4)).reshape(-1, 128)
        return np.concatenate([fp16_bytes(d), fp16_bytes(dmin), scales, qs], axis=1)

    @classmethod
    def _scaled(cls, blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per sub-block d·scale and dmin·min, (n, 8, 1) each."""
        d = fp16_field(blocks, 0)
        dmin = fp16_field(blocks, 2)
        sc, mn = _unpack_scales_k4(blocks[:, 4:16])
        return (d * sc)[:, :, None], (dmin * mn)[:, :, None]

    @classmethod
    def _dequantize(cls, blocks: np.ndarray) -> np.ndarray:
        dl, ml = cls._scaled(blocks)
        qs = blocks[:, 16:144].reshape(-1, 4, 1, 32)
        q = np.concatenate([qs & 0x0F, qs >> 4], axis=2).reshape(-1, 8, 32)
        return (dl * q - ml).reshape(-1, QK_K)


class Q5_K(Q4_K, ggml=T.Q5_K):
    """Q5_K: as Q4_K with 5-bit levels; the fifth bits go to ``qh``, two bits per 64 values."""

    nmax, rmin, nstep = 31, -0.5, 15

    @classmethod
    def _quantize(cls, b: np.ndarray) -> np.ndarray:
        d, dmin, scales, L = cls._levels(b)
        quads = L.reshape(-1, 4, 2, 32)  # [chunk of 64][low/high 32][value]
        low = quads & 0x0F
        qs = (low[:, :, 0] | (low[:, :, 1] << 4)).reshape(-1, 128)
        bits = (quads >> 4).astype(np.uint8)  # chunk c, half h → bit 2c+h of qh[value]
        shifts = (2 * np.arange(4)[:, None] + np.arange(2)[None, :]).astype(np.uint8)
        qh = np.bitwise_or.reduce((bits << shifts[None, :, :, None]).reshape(-1, 8, 32), axis=1)
        return np.concatenate([fp16_bytes(d), fp16_bytes(dmin), scales, qh, qs], axis=1)

    @classmethod
    def _dequantize(cls, blocks: np.ndarray) -> np.ndarray:
        dl, ml = cls._scaled(blocks)
        qh = blocks[:, 16:48]
        qs = blocks[:, 48:176].reshape(-1, 4, 1, 32)
        low = np.concatenate([qs & 0x0F, qs >> 4], axis=2).reshape(-1, 8, 32)
        high = (qh[:, None, :] >> np.arange(8, dtype=np.uint8)[None, :, None]) & 1
        return (dl * (low | (high << 4)) - ml).reshape(-1, QK_K)


class Q6_K(QuantType, ggml=T.Q6_K):
    """Q6_K: 16 sub-blocks of 16, 6-bit signed levels, 8-bit signed scales, one float16 d."""

    fp16_fields = (208,)

    @classmethod
    def _quantize(cls, b: np.ndarray) -> np.ndarray:
        n = b.shape[0]
        b = np.ascontiguousarray(b, dtype=F32)
        levels, scales = make_qx_quants(b, 16, 32)
        max_scale = first_absmax(scales, axis=1)
        zero = np.abs(max_scale) < GROUP_MAX_EPS
        iscale = F32(-128) / np.where(zero, F32(1), max_scale)
        d = F32(1) / iscale
        sc = np.minimum(nearest_int(iscale[:, None] * scales), 127).astype(np.int8)
        dl = fp16(d)[:, None] * sc
        k_kernels.relevel(b, 16, dl, np.zeros_like(dl), -32, 31, levels)
        L = levels.reshape(n, 2, 4, 32)  # [half of 128][quarter][value]
        ql = np.concatenate(
            [L[:, :, 0] & 0x0F | (L[:, :, 2] & 0x0F) << 4, L[:, :, 1] & 0x0F | (L[:, :, 3] & 0x0F) << 4], axis=2
        ).reshape(n, 128)
        qh = ((L[:, :, 0] >> 4) | (L[:, :, 1] >> 4) << 2 | (L[:, :, 2] >> 4) << 4 | (L[:, :, 3] >> 4) << 6).reshape(
            n, 64
        )
        out = np.concatenate([ql, qh, sc.view(np.uint8), fp16_bytes(d)], axis=1)
        out[zero] = 0
        return out

    @classmethod
    def _dequantize(cls, blocks: np.ndarray) -> np.ndarray:
        n = blocks.shape[0]
        ql = blocks[:, 0:128].reshape(n, 2, 2, 32)
        qh = blocks[:, 128:192].reshape(n, 2, 1, 32)
        sc = blocks[:, 192:208].view(np.int8).astype(F32).reshape(n, 16, 1)
        d = fp16_field(blocks, 208)[:, :, None]
        low = np.concatenate([ql & 0x0F, ql >> 4], axis=2)  # (n, 2, 4, 32): quarters 0..3
        high = (qh >> (2 * np.arange(4, dtype=np.uint8))[None, None, :, None]) & 3
        q = ((low | (high << 4)).astype(np.int8) - np.int8(32)).reshape(n, 16, 16)
        return ((d * sc) * q).reshape(n, QK_K)


def _pack_2bit(L: np.ndarray) -> np.ndarray:
    """(n, 256) levels 0..3 → (n, 64): value 128·h + 32·j + l goes to bits 2j of byte 32·h + l."""
    q = L.reshape(-1, 2, 4, 32)
    return (q[:, :, 0] | q[:, :, 1] << 2 | q[:, :, 2] << 4 | q[:, :, 3] << 6).reshape(-1, 64)


def _unpack_2bit(qs: np.ndarray) -> np.ndarray:
    """Inverse of :func:`_pack_2bit`: (n, 64) → (n, 256) levels 0..3."""
    q = qs.reshape(-1, 2, 1, 32)
    return ((q >> (2 * np.arange(4, dtype=np.uint8))[None, None, :, None]) & 3).reshape(-1, QK_K)


class Q2_K(QuantType, ggml=T.Q2_K):
    """Q2_K: 16 sub-blocks of 16, 2-bit levels, a 4-bit scale and 4-bit min each against two
    float16 super-scales (``d``, ``dmin``). Layout: scales[16], qs[64], d, dmin."""

    fp16_fields = (80, 82)

    @classmethod
    def _quantize(cls, b: np.ndarray) -> np.ndarray:
        b = np.ascontiguousarray(b, dtype=F32)
        levels, scales, mins = make_qkx2_quants(b, 16, 3, -0.5, 15, rms_weights=False, use_mad=True)
        max_scale = np.maximum(scales.max(axis=1), F32(0))
        max_min = np.maximum(mins.max(axis=1), F32(0))
        # C: int l = nearest_int(15/max · s); scales[j] = l (a uint8, so wrapped); then |= l << 4
        ls = nearest_int(_divide(F32(15), max_scale)[:, None] * scales) & 0xFF
        ls = np.where((max_scale > 0)[:, None], ls, 0)
        lm = nearest_int(_divide(F32(15), max_min)[:, None] * mins)
        sc = np.where((max_min > 0)[:, None], (ls | (lm << 4)) & 0xFF, ls).astype(np.uint8)
        d = np.where(max_scale > 0, max_scale / F32(15), F32(0))
        dmin = np.where(max_min > 0, max_min / F32(15), F32(0))
        # second pass against the scales as stored
        k_kernels.relevel(b, 16, fp16(d)[:, None] * (sc & 0x0F), fp16(dmin)[:, None] * (sc >> 4), 0, 3, levels)
        qs = _pack_2bit(levels)
        return np.concatenate([sc, qs, fp16_bytes(d), fp16_bytes(dmin)], axis=1)

    @classmethod
    def _dequantize(cls, blocks: np.ndarray) -> np.ndarray:
        sc = blocks[:, 0:16]
        d, dmin = fp16_field(blocks, 80), fp16_field(blocks, 82)
        dl = (d * (sc & 0x0F))[:, :, None]
        ml = (dmin * (sc >> 4))[:, :, None]
        q = _unpack_2bit(blocks[:, 16:80]).reshape(-1, 16, 16)
        return (dl * q - ml).reshape(-1, QK_K)


def make_q3_quants(b: np.ndarray, sub: int, nmax: int) -> tuple[np.ndarray, np.ndarray]:
    """ggml's make_q3_quants with do_rmse for every ``sub``-value sub-block of the super-blocks
    ``b`` (n, 256): levels L + nmax (n, 256) uint8 and the signed scale (n, 256/sub), ``scale·(L -
    nmax)`` ≈ x: start from the max-magnitude grid, then up to five passes that move one level
    at a time while the weighted fit improves. Compiled (k_kernels.q3)."""
    n, m = b.shape[0], QK_K // sub
    levels = np.empty((n, QK_K), dtype=np.uint8)
    scales = np.empty((n, m), dtype=F32)
    k_kernels.q3(np.ascontiguousarray(b, dtype=F32), sub, nmax, levels, scales)
    return levels, scales


class Q3_K(QuantType, ggml=T.Q3_K):
    """Q3_K: 16 sub-blocks of 16, 3-bit signed levels (two low bits in ``qs``, the third in
    ``hmask``), 6-bit signed scales against one float16 ``d``. Layout: hmask[32], qs[64],
    scales[12], d."""

    fp16_fields = (108,)

    @classmethod
    def _quantize(cls, b: np.ndarray) -> np.ndarray:
        n = b.shape[0]
        b = np.ascontiguousarray(b, dtype=F32)
        levels, scales = make_q3_quants(b, 16, 4)
        max_scale = first_absmax(scales, axis=1)
        has = max_scale != 0
        iscale = F32(-32) / np.where(has, max_scale, F32(1))
        l6 = nearest_int(iscale[:, None] * scales)
        l6 = ((l6 + 128) & 0xFF) - 128  # C: int8_t l = nearest_int(...)
        l6 = np.where(has[:, None], np.clip(l6, -32, 31) + 32, 0).astype(np.uint8)
        d = np.where(has, F32(1) / iscale, F32(0))
        sc = (l6.astype(np.int16) - 32).astype(F32)  # the scales as stored, -32..31
        dl = fp16(d)[:, None] * sc
        k_kernels.relevel(b, 16, dl, np.zeros_like(dl), -4, 3, levels)
        L = levels
        high = L > 3
        hmask = np.bitwise_or.reduce(
            high.reshape(n, 8, 32).astype(np.uint8) << np.arange(8, dtype=np.uint8)[None, :, None], axis=1
        )
        qs = _pack_2bit(np.where(high, L - 4, L).astype(np.uint8))
        return np.concatenate([hmask, qs, _pack_scales_k3(l6), fp16_bytes(d)], axis=1)

    @classmethod
    def _dequantize(cls, blocks: np.ndarray) -> np.ndarray:
        n = blocks.shape[0]
        d = fp16_field(blocks, 108)
        dl = (d * (_unpack_scales_k3(blocks[:, 96:108]).astype(np.int16) - 32))[:, :, None]
        low = _unpack_2bit(blocks[:, 32:96]).astype(np.int8)
        high = (blocks[:, None, 0:32] >> np.arange(8, dtype=np.uint8)[None, :, None]) & 1  # (n, 8, 32)
        q = (low - np.where(high.reshape(n, QK_K) != 0, np.int8(0), np.int8(4))).reshape(n, 16, 16)
        return (dl * q).reshape(n, QK_K)


def _pack_scales_k3(l6: np.ndarray) -> np.ndarray:
    """16 six-bit scales (n, 16) → ggml's 12 bytes: low nibbles of 0..7 and 8..15 share bytes
    0..7; the top two bits of scale j go to byte 8 + j%4 at bit 2·(j//4)."""
    low = l6 & 0x0F
    top = (l6 >> 4).reshape(-1, 4, 4)  # [j//4][j%4]
    out = np.empty((l6.shape[0], 12), dtype=np.uint8)
    out[:, 0:8] = low[:, 0:8] | (low[:, 8:16] << 4)
    out[:, 8:12] = top[:, 0] | top[:, 1] << 2 | top[:, 2] << 4 | top[:, 3] << 6
    return out


def _unpack_scales_k3(s: np.ndarray) -> np.ndarray:
    """Inverse of :func:`_pack_scales_k3`: (n, 12) → (n, 16) in 0..63."""
    low = np.concatenate([s[:, 0:8] & 0x0F, s[:, 0:8] >> 4], axis=1)
    top = (s[:, None, 8:12] >> (2 * np.arange(4, dtype=np.uint8))[None, :, None]) & 3  # (n, j//4, j%4)
    return low | (top.reshape(-1, 16) << 4)
