"""The K-quants' scale searches as compiled loops: ggml's ``make_qkx2_quants``,
``make_qx_quants`` and ``make_q3_quants``, and the second pass, line for line.

Why compiled. A search tries ~20 candidate scales per sub-block of 16 or 32 values, each a pass
over the values with running sums and an error sum. As NumPy over all sub-blocks at once every
pass was a dozen array operations with temporaries, and SmolLM2's Q4_K_M quantize ran at half
llama-quantize's speed. Here LANES sub-blocks go side by side, one per vector lane, their values
in cache through every candidate (see ``qkx2``).

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


#: sub-blocks searched side by side, one per vector lane (``qkx2``, ``qx``, ``q3``)
LANES = 32
#: ggml's GROUP_MAX_EPS: a sub-block whose largest magnitude is below it is all zero
GROUP_MAX_EPS = F32(1e-15)


@njit(inline="always")
def _gather(x, sub, first, used, xs):
    """Sub-blocks first .. first+used-1 of the rows of ``x`` (numbered row by row) into the
    columns of ``xs`` (sub, LANES); spare lanes repeat sub-block ``first`` and are never
    written back."""
    m = x.shape[1] // sub
    for k in range(LANES):
        s = first + k if k < used else first
        n, o = s // m, (s % m) * sub
        for i in range(sub):
            xs[i, k] = x[n, o + i]


@njit(inline="always")
def _signed_level(v, nmax):
    """``nearest_int``, clamped to -nmax..nmax-1."""
    return max(np.int32(-nmax), min(np.int32(nmax - 1), np.int32(np.rint(v))))


@njit(**_jit)
def qx(x, sub, nmax, levels, scales):
    """Every ``sub``-value sub-block of the rows of ``x`` (n, 256) float32: its levels + nmax
    (into ``levels``, uint8 like x) and signed scale (into ``scales``, (n, 256/sub)), fitted by
    ggml's make_qx_quants with rmse_type 1 (weights x², no importance matrix). LANES
    sub-blocks side by side, as ``qkx2``."""
    m = x.shape[1] // sub
    total = x.shape[0] * m
    xs = np.zeros((sub, LANES), F32)
    w = np.zeros((sub, LANES), F32)
    wx = np.zeros((sub, LANES), F32)
    amax = np.zeros(LANES, F32)
    mx = np.zeros(LANES, F32)
    iscale = np.zeros(LANES, F32)
    best_iscale = np.zeros(LANES, F32)
    sumlx = np.zeros(LANES, F32)
    suml2 = np.zeros(LANES, F32)
    scale = np.zeros(LANES, F32)
    best = np.zeros(LANES, F32)
    for first in range(0, total, LANES):
        used = min(LANES, total - first)
        _gather(x, sub, first, used, xs)
        for k in range(LANES):
            amax[k] = 0
            mx[k] = 0
        for i in range(sub):
            for k in range(LANES):
                v = xs[i, k]
                w[i, k] = v * v
                wx[i, k] = w[i, k] * v
                if abs(v) > amax[k]:
                    amax[k] = abs(v)
                    mx[k] = v
        for k in range(LANES):
            if amax[k] < GROUP_MAX_EPS:
                mx[k] = 1  # an all-zero sub-block: settled at the end
            iscale[k] = F32(-nmax) / mx[k]
            best_iscale[k] = iscale[k]
        for step in range(-10, 10):
            if step == 0:
                continue
            if step > -10:
                for k in range(LANES):
                    iscale[k] = -(F32(nmax) + F32(0.1) * F32(step)) / mx[k]
            for k in range(LANES):
                sumlx[k] = 0
                suml2[k] = 0
            for i in range(sub):
                for k in range(LANES):
                    q = F32(_signed_level(iscale[k] * xs[i, k], nmax))
                    sumlx[k] += wx[i, k] * q
                    suml2[k] += w[i, k] * q * q
            for k in range(LANES):
                if step == -10:  # the first fit, at -nmax/max
                    scale[k] = sumlx[k] / suml2[k] if suml2[k] != 0 else F32(0)
                    best[k] = scale[k] * sumlx[k]
                elif suml2[k] > 0 and sumlx[k] * sumlx[k] > best[k] * suml2[k]:
                    best_iscale[k] = iscale[k]
                    scale[k] = sumlx[k] / suml2[k]
                    best[k] = scale[k] * sumlx[k]
        for k in range(used):
            s = first + k
            n, j = s // m, s % m
            zero = amax[k] < GROUP_MAX_EPS
            for i in range(sub):
                levels[n, j * sub + i] = 0 if zero else _signed_level(best_iscale[k] * xs[i, k], nmax) + nmax
            scales[n, j] = 0 if zero else scale[k]


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


@njit(**_jit)
def qkx2(x, sub, nmax, rmin, rdelta, nstep, rms_weights, use_mad, levels, scales, mins):
    """Every ``sub``-value sub-block of the rows of ``x`` (n, 256) float32: its levels (into
    ``levels``, uint8 like x), scale and minimum (into ``scales``/``mins``, (n, 256/sub),
    the minimum negated as ggml's ``the_min``), fitted by ggml's make_qkx2_quants with weights
    rms(sub-block) + |x| (``rms_weights``: Q4_K, Q5_K) or |x| (Q2_K), squared or (``use_mad``)
    absolute errors. ``rmin`` and ``rdelta`` are float32.

    C's loop over one sub-block, run for LANES sub-blocks side by side, one per vector lane
    (the inner loops over k): each lane still adds its own values in index order, so its
    results are the C's, but its running sums no longer wait on one another's adds (one
    sub-block at a time was bound by that latency, as the C is: 4.3× faster this way). Flat
    sub-blocks (max = min) run with a span of 1 and are settled at the end, as C returns early."""
    m = x.shape[1] // sub
    total = x.shape[0] * m
    xs = np.zeros((sub, LANES), F32)
    w = np.zeros((sub, LANES), F32)
    lv = np.zeros((sub, LANES), np.int32)
    aux = np.zeros((sub, LANES), np.int32)
    lo = np.zeros(LANES, F32)
    hi = np.zeros(LANES, F32)
    av = np.zeros(LANES, F32)
    sum_w = np.zeros(LANES, F32)
    sum_x = np.zeros(LANES, F32)
    span = np.zeros(LANES, F32)
    scale = np.zeros(LANES, F32)
    the_min = np.zeros(LANES, F32)
    best = np.zeros(LANES, F32)
    cand = np.zeros(LANES, F32)
    sum_l = np.zeros(LANES, F32)
    sum_l2 = np.zeros(LANES, F32)
    sum_xl = np.zeros(LANES, F32)
    this_scale = np.zeros(LANES, F32)
    this_min = np.zeros(LANES, F32)
    cur = np.zeros(LANES, F32)
    better = np.zeros(LANES, np.bool_)
    for first in range(0, total, LANES):
        used = min(LANES, total - first)
        _gather(x, sub, first, used, xs)
        for k in range(LANES):
            av[k] = 0
            sum_w[k] = 0
            sum_x[k] = 0
            lo[k] = xs[0, k]
            hi[k] = xs[0, k]
        if rms_weights:
            for i in range(sub):
                for k in range(LANES):
                    av[k] += xs[i, k] * xs[i, k]
            for k in range(LANES):
                av[k] = np.sqrt(av[k] / F32(sub))
        for i in range(sub):
            for k in range(LANES):
                v = xs[i, k]
                w[i, k] = av[k] + abs(v)
                lo[k] = min(lo[k], v)
                hi[k] = max(hi[k], v)
                sum_w[k] += w[i, k]
                sum_x[k] += w[i, k] * v
        for k in range(LANES):
            if lo[k] > 0:
                lo[k] = 0
            span[k] = hi[k] - lo[k] if hi[k] != lo[k] else F32(1)  # flat lanes: settled at the end
            the_min[k] = lo[k]
            cand[k] = F32(nmax) / span[k]
            scale[k] = F32(1) / cand[k]
            best[k] = 0
        for i in range(sub):
            for k in range(LANES):
                q = _level(cand[k] * (xs[i, k] - lo[k]), nmax)
                lv[i, k] = q
                diff = scale[k] * F32(q) + lo[k] - xs[i, k]
                best[k] += w[i, k] * (abs(diff) if use_mad else diff * diff)
        for step in range(nstep + 1):
            for k in range(LANES):
                cand[k] = (rmin + rdelta * F32(step) + F32(nmax)) / (hi[k] - the_min[k])
                sum_l[k] = 0
                sum_l2[k] = 0
                sum_xl[k] = 0
                cur[k] = 0
            for i in range(sub):
                for k in range(LANES):
                    q = _level(cand[k] * (xs[i, k] - the_min[k]), nmax)
                    aux[i, k] = q
                    wl = w[i, k] * F32(q)
                    sum_l[k] += wl
                    sum_l2[k] += wl * F32(q)
                    sum_xl[k] += wl * xs[i, k]
            for k in range(LANES):
                det = sum_w[k] * sum_l2[k] - sum_l[k] * sum_l[k]
                this_scale[k] = (sum_w[k] * sum_xl[k] - sum_x[k] * sum_l[k]) / det
                this_min[k] = (sum_l2[k] * sum_x[k] - sum_l[k] * sum_xl[k]) / det
                better[k] = det > 0
                if this_min[k] > 0:
                    this_min[k] = 0
                    this_scale[k] = sum_xl[k] / sum_l2[k]
            for i in range(sub):
                for k in range(LANES):
                    diff = this_scale[k] * F32(aux[i, k]) + this_min[k] - xs[i, k]
                    cur[k] += w[i, k] * (abs(diff) if use_mad else diff * diff)
            for k in range(LANES):
                if better[k] and cur[k] < best[k]:
                    best[k] = cur[k]
                    scale[k] = this_scale[k]
                    the_min[k] = this_min[k]
                    for i in range(sub):
                        lv[i, k] = aux[i, k]
        for k in range(used):
            s = first + k
            n, j = s // m, s % m
            flat = hi[k] == lo[k]
            for i in range(sub):
                levels[n, j * sub + i] = 0 if flat else lv[i, k]
            scales[n, j] = 0 if flat else scale[k]
            mins[n, j] = -lo[k] if flat else -the_min[k]


@njit(**_jit)
def q3(x, sub, nmax, levels, scales):
    """Every ``sub``-value sub-block of the rows of ``x`` (n, 256) float32: its levels + nmax
    (into ``levels``, uint8 like x) and signed scale (into ``scales``, (n, 256/sub)), fitted by
    ggml's make_q3_quants with do_rmse: the max-magnitude grid, then up to five passes that
    move one level at a time while the x²-weighted fit improves (each accepted move changes the
    sums the next value is judged by, so values go in order). LANES sub-blocks side by side,
    as ``qkx2``; a pass that moves nothing in a lane leaves that lane as it is."""
    m = x.shape[1] // sub
    total = x.shape[0] * m
    xs = np.zeros((sub, LANES), F32)
    w = np.zeros((sub, LANES), F32)
    wx = np.zeros((sub, LANES), F32)
    L = np.zeros((sub, LANES), F32)
    amax = np.zeros(LANES, F32)
    mx = np.zeros(LANES, F32)
    sumlx = np.zeros(LANES, F32)
    suml2 = np.zeros(LANES, F32)
    moves = np.zeros(LANES, np.int32)
    for first in range(0, total, LANES):
        used = min(LANES, total - first)
        _gather(x, sub, first, used, xs)
        for k in range(LANES):
            amax[k] = 0
            mx[k] = 0
            sumlx[k] = 0
            suml2[k] = 0
        for i in range(sub):
            for k in range(LANES):
                v = xs[i, k]
                if abs(v) > amax[k]:
                    amax[k] = abs(v)
                    mx[k] = v
        for k in range(LANES):
            if amax[k] < GROUP_MAX_EPS:
                mx[k] = 1  # an all-zero sub-block: settled at the end
        for i in range(sub):
            for k in range(LANES):
                v = xs[i, k]
                L[i, k] = F32(_signed_level(F32(-nmax) / mx[k] * v, nmax))
                w[i, k] = v * v
                wx[i, k] = w[i, k] * v
                sumlx[k] += wx[i, k] * L[i, k]
                suml2[k] += w[i, k] * L[i, k] * L[i, k]
        for _ in range(5):
            for k in range(LANES):
                moves[k] = 0
            for i in range(sub):
                for k in range(LANES):  # no branches: the lanes run as vectors
                    li = L[i, k]
                    slx = sumlx[k] - wx[i, k] * li
                    sl2 = suml2[k] - w[i, k] * li * li
                    new = F32(_signed_level(xs[i, k] * sl2 / slx, nmax))  # used only where slx > 0
                    slx_new = slx + wx[i, k] * new
                    sl2_new = sl2 + w[i, k] * new * new
                    better = slx_new * slx_new * suml2[k] > sumlx[k] * sumlx[k] * sl2_new
                    take = (slx > 0) & (new != li) & (sl2_new > 0) & better
                    L[i, k] = new if take else li
                    sumlx[k] = slx_new if take else sumlx[k]
                    suml2[k] = sl2_new if take else suml2[k]
                    moves[k] += np.int32(take)
            moved = False
            for k in range(LANES):
                moved |= moves[k] > 0
            if not moved:
                break
        for k in range(used):
            s = first + k
            n, j = s // m, s % m
            zero = amax[k] < GROUP_MAX_EPS
            for i in range(sub):
                levels[n, j * sub + i] = 0 if zero else np.int32(L[i, k]) + nmax
            scales[n, j] = 0 if zero else sumlx[k] / suml2[k]
