"""The K-quants' scale searches as compiled loops: ggml's ``make_qkx2_quants``, line for line.

Why compiled. The search tries ~20 candidate scales per sub-block of 16 or 32 values, each a
pass over the values with three running sums and an error sum. As NumPy over all sub-blocks at
once (k_types.make_qkx2_quants, kept as the readable statement of it) every pass is a dozen
array operations with temporaries; SmolLM2's Q4_K_M quantize ran at half llama-quantize's speed.
A loop over one sub-block keeps its values in cache through every candidate.

The same float32 operations as the C, in its order, with no ``fastmath`` (no FMA contraction, no
reassociation), so the bytes are ggml's; ``nogil`` lets QuantType.quantize run a chunk per core.
Constants are ``F32(...)``: a Python float would widen the arithmetic to float64.
"""

from __future__ import annotations

import numpy as np
from numba import njit

F32 = np.float32
_jit = {"nogil": True, "cache": True, "error_model": "numpy"}


@njit(inline="always")
def _level(v, nmax):
    """ggml's ``nearest_int`` (half to even), clamped to 0..nmax."""
    return max(np.int32(0), min(np.int32(nmax), np.int32(np.rint(v))))


@njit(**_jit)
def qkx2(x, sub, nmax, rmin, rdelta, nstep, rms_weights, use_mad, levels, scales, mins):
    """Every ``sub``-value sub-block of the rows of ``x`` (n, 256) float32: its levels (into
    ``levels``, uint8 like x), scale and minimum (into ``scales``/``mins``, (n, 256/sub),
    the minimum negated as ggml's ``the_min``), fitted by ggml's make_qkx2_quants with weights
    rms(sub-block) + |x| (``rms_weights``: Q4_K, Q5_K) or |x| (Q2_K), squared or (``use_mad``)
    absolute errors. ``rmin`` and ``rdelta`` are float32."""
    w = np.empty(sub, F32)
    aux = np.empty(sub, np.int32)
    for n in range(x.shape[0]):
        row = x[n]
        for j in range(x.shape[1] // sub):
            o = j * sub
            av = F32(0)
            if rms_weights:
                s2 = F32(0)
                for i in range(sub):
                    s2 += row[o + i] * row[o + i]
                av = np.sqrt(s2 / F32(sub))
            lo, hi = row[o], row[o]
            sum_w, sum_x = F32(0), F32(0)
            for i in range(sub):
                v = row[o + i]
                w[i] = av + abs(v)
                lo = min(lo, v)
                hi = max(hi, v)
                sum_w += w[i]
                sum_x += w[i] * v
            if lo > 0:
                lo = F32(0)
            if hi == lo:
                for i in range(sub):
                    levels[n, o + i] = 0
                scales[n, j] = 0
                mins[n, j] = -lo
                continue
            iscale = F32(nmax) / (hi - lo)
            scale = F32(1) / iscale
            best = F32(0)
            for i in range(sub):
                q = _level(iscale * (row[o + i] - lo), nmax)
                levels[n, o + i] = q
                diff = scale * F32(q) + lo - row[o + i]
                best += w[i] * (abs(diff) if use_mad else diff * diff)
            the_min = lo
            for step in range(nstep + 1):
                cand = (rmin + rdelta * F32(step) + F32(nmax)) / (hi - the_min)
                sum_l, sum_l2, sum_xl = F32(0), F32(0), F32(0)
                for i in range(sub):
                    q = _level(cand * (row[o + i] - the_min), nmax)
                    aux[i] = q
                    wl = w[i] * F32(q)
                    sum_l += wl
                    sum_l2 += wl * F32(q)
                    sum_xl += wl * row[o + i]
                det = sum_w * sum_l2 - sum_l * sum_l
                if not det > 0:
                    continue
                this_scale = (sum_w * sum_xl - sum_x * sum_l) / det
                this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det
                if this_min > 0:
                    this_min = F32(0)
                    this_scale = sum_xl / sum_l2
                cur = F32(0)
                for i in range(sub):
                    diff = this_scale * F32(aux[i]) + this_min - row[o + i]
                    cur += w[i] * (abs(diff) if use_mad else diff * diff)
                if cur < best:
                    best = cur
                    scale = this_scale
                    the_min = this_min
                    for i in range(sub):
                        levels[n, o + i] = aux[i]
            scales[n, j] = scale
            mins[n, j] = -the_min


#: ggml's GROUP_MAX_EPS: a sub-block whose largest magnitude is below it is all zero
GROUP_MAX_EPS = F32(1e-15)


@njit(inline="always")
def _signed_level(v, nmax):
    """``nearest_int``, clamped to -nmax..nmax-1."""
    return max(np.int32(-nmax), min(np.int32(nmax - 1), np.int32(np.rint(v))))


@njit(**_jit)
def qx(x, sub, nmax, levels, scales):
    """Every ``sub``-value sub-block of the rows of ``x`` (n, 256) float32: its levels + nmax
    (into ``levels``, uint8 like x) and signed scale (into ``scales``, (n, 256/sub)), fitted by
    ggml's make_qx_quants with rmse_type 1 (weights x², no importance matrix)."""
    w = np.empty(sub, F32)
    wx = np.empty(sub, F32)
    for n in range(x.shape[0]):
        row = x[n]
        for j in range(x.shape[1] // sub):
            o = j * sub
            for i in range(sub):
                w[i] = row[o + i] * row[o + i]
                wx[i] = w[i] * row[o + i]
            amax, mx = F32(0), F32(0)
            for i in range(sub):
                if abs(row[o + i]) > amax:
                    amax, mx = abs(row[o + i]), row[o + i]
            if amax < GROUP_MAX_EPS:
                for i in range(sub):
                    levels[n, o + i] = 0
                scales[n, j] = 0
                continue
            best_iscale = F32(-nmax) / mx
            sumlx, suml2 = F32(0), F32(0)
            for i in range(sub):
                q = F32(_signed_level(best_iscale * row[o + i], nmax))
                sumlx += wx[i] * q
                suml2 += w[i] * q * q
            scale = sumlx / suml2 if suml2 != 0 else F32(0)
            best = scale * sumlx
            for step in range(-9, 10):
                if step == 0:
                    continue
                iscale = -(F32(nmax) + F32(0.1) * F32(step)) / mx
                sumlx, suml2 = F32(0), F32(0)
                for i in range(sub):
                    q = F32(_signed_level(iscale * row[o + i], nmax))
                    sumlx += wx[i] * q
                    suml2 += w[i] * q * q
                if suml2 > 0 and sumlx * sumlx > best * suml2:
                    best_iscale = iscale
                    scale = sumlx / suml2
                    best = scale * sumlx
            for i in range(sub):
                levels[n, o + i] = _signed_level(best_iscale * row[o + i], nmax) + nmax
            scales[n, j] = scale


@njit(**_jit)
def relevel(x, sub, dl, ml, lo, hi, levels):
    """The second pass of every K-quant: each value of a sub-block whose stored scale ``dl``
    (float16 d times the 6- or 8-bit sub-scale, (n, 256/sub)) is not zero gets the level
    ``nearest_int((x + ml)/dl)`` clamped to lo..hi, stored as level − lo (uint8); the
    levels of a zero-scale sub-block stay as the search left them, as in C."""
    for n in range(x.shape[0]):
        for j in range(x.shape[1] // sub):
            d = dl[n, j]
            if d == 0:
                continue
            m = ml[n, j]
            for i in range(j * sub, j * sub + sub):
                q = max(np.int32(lo), min(np.int32(hi), np.int32(np.rint((x[n, i] + m) / d))))
                levels[n, i] = q - lo
