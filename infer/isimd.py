"""Integer lanes for numba kernels: int8 codes multiplied in integer SIMD, as ggml multiplies them.

Why. llama.cpp never widens a weight code to float for a dot product: it quantizes the activation
row to int8 once (Q8_0/Q8_K, ``activations.py``) and multiplies int8 by int8, 32 pairs per
instruction, adding in int32. Widened to float (``simd.py``) a 32-value block costs four
conversions and four multiply-adds; in integers it is one multiply-add of bytes and one of
16-bit pairs (AVX2 ``vpmaddubsw`` + ``vpmaddwd``).

Exact, so every path agrees. Integer sums do not round, so how a CPU adds the products does not
change them; what follows is float32 arithmetic done in one fixed order (``fma`` and ``total``
here carry no fast-math licence). Every instruction set below therefore gives the same bits, and
the same bits as ggml's own ``vec_dot`` (whose lane layout these follow: lane k of a 32-byte
product holds the sum of bytes 4k..4k+3). tests/test_int_kernels.py checks both.

Instruction sets. The set is a compile-time argument (``Isa.token``), so numba compiles, and
caches, one specialization of a kernel per set, and a process can run any of them side by side
(the tests compare them). ``PORTABLE`` is target-independent LLVM IR (widening multiplies; any
CPU); ``AVX2`` uses ``vpsignb``/``vpmaddubsw``/``vpmaddwd``; ``VNNI`` (AVX-512 VNNI with VL, or
AVX-VNNI: Intel since Ice Lake / Alder Lake, AMD since Zen 4) adds ``vpdpbusd``, a byte
multiply-add straight into int32 lanes, and ``vpdpwssd``, a 16-bit one that accumulates, as ggml
uses ``_mm256_dpbusd_epi32`` when it is built for such a CPU. ``best()`` picks the fastest set the
CPU running this has.

Loads read 16 or 32 bytes starting at element ``i`` with no bounds check: the caller's loop
bounds are the only guard, as in C.

Caching. numba keys a cached kernel by the kernel's own source file, not by the intrinsics it
inlines: a change here must also touch int_kernels.py (or clear its ``__pycache__``), or a stale
compiled kernel is loaded.
"""

from __future__ import annotations

import os

import llvmlite.binding as llvm
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic, models, register_model

from llamashare.errors import InferenceError
from llamashare.infer.simd import F8

_I8, _I16, _I32, _F = ir.IntType(8), ir.IntType(16), ir.IntType(32), ir.FloatType()
_B32 = ir.VectorType(_I8, 32)
_W16 = ir.VectorType(_I16, 16)
_L8 = ir.VectorType(_I32, 8)
_F8 = ir.VectorType(_F, 8)


# -- the instruction set, a type -------------------------------------------------------------


class Isa:
    """An instruction set kernels may be compiled for. Kernels take its ``token`` as their first
    argument: an empty array whose dtype names the set. Numba types (and caches) a kernel by its
    arguments' types, so each set gets its own compiled specialization; an array, unlike an
    object of a class of our own, is typed by numba's fast C dispatcher (0.4 µs a call, not 6).

    ``needs``: alternative sets of LLVM CPU features, any one of which suffices (AVX-512 VNNI
    with VL, or AVX-VNNI, give the same 256-bit instructions in two encodings; LLVM picks the
    one the CPU has)."""

    def __init__(self, name: str, needs: tuple[tuple[str, ...], ...], dtype: type) -> None:
        self.name, self.needs = name, needs
        self.token: np.ndarray = np.empty(0, dtype=dtype)

    def runs_on(self, features: dict[str, bool]) -> bool:
        return any(all(features.get(f, False) for f in alternative) for alternative in self.needs)

    def __repr__(self) -> str:
        return f"Isa({self.name})"


PORTABLE = Isa("portable", ((),), np.uint8)
AVX2 = Isa("avx2", (("avx2",),), np.int16)
VNNI = Isa("vnni", (("avx2", "avx512vnni", "avx512vl"), ("avx2", "avxvnni")), np.int32)
ALL = (VNNI, AVX2, PORTABLE)  # fastest first
_BY_DTYPE = {str(isa.token.dtype): isa.name for isa in ALL}


def available() -> list[Isa]:
    """The sets this CPU executes, fastest first."""
    features = llvm.get_host_cpu_features()
    return [isa for isa in ALL if isa.runs_on(features)]


def best() -> Isa:
    """The fastest set this CPU has; ``LLAMASHARE_ISA=portable`` (or another name) forces one."""
    have = available()
    wanted = os.environ.get("LLAMASHARE_ISA")
    if wanted:
        for isa in have:
            if isa.name == wanted:
                return isa
        raise InferenceError(f"LLAMASHARE_ISA={wanted}: this CPU has {', '.join(i.name for i in have)}")
    return have[0]


# -- 32 bytes and 8 int32 lanes as numba types -----------------------------------------------


class _VecType(types.Type):
    def __init__(self, name: str, llvm_type: ir.Type) -> None:
        self.llvm_type = llvm_type
        super().__init__(name=name)


B32 = _VecType("B32", _B32)  # 32 bytes; signed or unsigned by the operation
L8 = _VecType("L8", _L8)  # 8 int32 lanes


@register_model(_VecType)
class _VecModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type) -> None:
        super().__init__(dmm, fe_type, fe_type.llvm_type)


def _ptr(context, builder, arrty, arr, i, vec: ir.Type) -> ir.Value:
    data = context.make_array(arrty)(context, builder, arr).data
    return builder.bitcast(builder.gep(data, [i]), vec.as_pointer())


def _splat(builder: ir.IRBuilder, value: ir.Value, n: int) -> ir.Value:
    vec = ir.VectorType(value.type, n)
    one = builder.insert_element(ir.Constant(vec, ir.Undefined), value, ir.Constant(_I32, 0))
    return builder.shuffle_vector(one, ir.Constant(vec, ir.Undefined), ir.Constant(ir.VectorType(_I32, n), [0] * n))


def _const_bytes(value: int) -> ir.Constant:
    return ir.Constant(_B32, [value & 0xFF] * 32)


def _pick(builder: ir.IRBuilder, v: ir.Value, idx: list[int]) -> ir.Value:
    return builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(_I32, len(idx)), idx))


def _x86(builder: ir.IRBuilder, name: str, ret: ir.Type, *args: ir.Value) -> ir.Value:
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ret, [a.type for a in args]), name)
    return builder.call(fn, list(args))


# -- loads and byte operations (the same IR on every set) ------------------------------------


@intrinsic
def load32(typingctx, a, i):
    """a[i:i+32] of a uint8/int8 array."""

    def codegen(context, builder, sig, args):
        return builder.load(_ptr(context, builder, sig.args[0], args[0], args[1], _B32), align=1)

    return B32(a, i), codegen


@intrinsic
def nibbles32(typingctx, a, i):
    """The 32 nibbles of a[i:i+16]: low nibbles in bytes 0..15, high nibbles in 16..31 (ggml's
    ``bytes_from_nibbles_32``: Q4_0's value j and j+16 share byte j)."""

    def codegen(context, builder, sig, args):
        v16 = ir.VectorType(_I8, 16)
        raw = builder.load(_ptr(context, builder, sig.args[0], args[0], args[1], v16), align=1)
        lo = builder.and_(raw, ir.Constant(v16, [15] * 16))
        hi = builder.lshr(raw, ir.Constant(v16, [4] * 16))
        return builder.shuffle_vector(lo, hi, ir.Constant(ir.VectorType(_I32, 32), list(range(32))))

    return B32(a, i), codegen


@intrinsic
def bits32(typingctx, a, i):
    """The 32 bits of the little-endian word at a[i:i+4], one per byte (0 or 1): Q5_0's fifth
    bits, bit j for value j (ggml's ``bytes_from_bits_32``: a byte shuffle and a mask)."""

    def codegen(context, builder, sig, args):
        v4 = ir.VectorType(_I8, 4)
        word = builder.load(_ptr(context, builder, sig.args[0], args[0], args[1], v4), align=1)
        spread = builder.shuffle_vector(word, word, ir.Constant(ir.VectorType(_I32, 32), [j // 8 for j in range(32)]))
        mask = ir.Constant(_B32, [1 << (j % 8) for j in range(32)])
        hit = builder.icmp_unsigned("!=", builder.and_(spread, mask), ir.Constant(_B32, [0] * 32))
        return builder.zext(hit, _B32)

    return B32(a, i), codegen


@intrinsic
def prefetch(typingctx, a, i):
    """Ask for the cache line holding a[i], for reading, into every cache level (``prefetcht0``);
    no effect on any result."""

    def codegen(context, builder, sig, args):
        data = context.make_array(sig.args[0])(context, builder, args[0]).data
        at = builder.bitcast(builder.gep(data, [args[1]]), ir.IntType(8).as_pointer())
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [at.type, _I32, _I32, _I32]), "llvm.prefetch.p0i8"
        )
        builder.call(fn, [at, ir.Constant(_I32, 0), ir.Constant(_I32, 3), ir.Constant(_I32, 1)])
        return context.get_dummy_value()

    return types.none(a, i), codegen


#: How far ahead of the weight row being multiplied ``prefetch_ahead`` asks for the rows (bytes).
AHEAD = 8192


@njit(inline="always", cache=True)
def prefetch_ahead(w, r):
    """Ask for the row of the matrix ``w`` (rows, bytes) that lies ``AHEAD`` bytes after row r.

    Why. Generation reads each weight once per token, straight from memory, in small matrices
    (0.1–1 MB each for a 135M model). The CPU's own prefetcher stops at every 4 KiB page, so
    each thread kept stalling on memory: in SmolLM2-135M Q8_0 on the Intel Xeon here, a token's
    products took 9.5 ms, and 5.5 ms asked for 8 KiB ahead (the whole token 12.0 -> 9.5 ms; the
    best distance was 8-16 KiB in a noisy sweep)."""
    nxt = r + (AHEAD + w.shape[1] - 1) // w.shape[1]
    if nxt < w.shape[0]:
        row = w[nxt]
        for k in range(0, w.shape[1], 64):
            prefetch(row, k)


def _bytes_op(op: str, doc: str):
    @intrinsic
    def f(typingctx, b, k):
        if not isinstance(k, types.IntegerLiteral):
            return None  # constants only: they become immediates

        def codegen(context, builder, sig, args):
            return getattr(builder, op)(args[0], _const_bytes(sig.args[1].literal_value))

        return B32(B32, k), codegen

    f.__doc__ = doc
    return f


band = _bytes_op("and_", "b & k in every byte (k a constant).")
bshr = _bytes_op("lshr", "b >> k in every byte, zeros shifted in (k a constant).")
bshl = _bytes_op("shl", "b << k in every byte (k a constant).")


@intrinsic
def bor(typingctx, a, b):
    """a | b."""

    def codegen(context, builder, sig, args):
        return builder.or_(args[0], args[1])

    return B32(B32, B32), codegen


# -- products: the instruction sets differ here ----------------------------------------------


def _dot_us_portable(builder: ir.IRBuilder, u: ir.Value, s: ir.Value, signed_u: bool) -> ir.Value:
    """Lane k = Σ u[4k+j]·s[4k+j] in widening target-independent IR."""
    w32 = ir.VectorType(_I32, 32)
    uw = builder.sext(u, w32) if signed_u else builder.zext(u, w32)
    p = builder.mul(uw, builder.sext(s, w32))
    pairs = builder.add(_pick(builder, p, list(range(0, 32, 2))), _pick(builder, p, list(range(1, 32, 2))))
    return builder.add(_pick(builder, pairs, list(range(0, 16, 2))), _pick(builder, pairs, list(range(1, 16, 2))))


def _maddubs(builder: ir.IRBuilder, u: ir.Value, s: ir.Value) -> ir.Value:
    return _x86(builder, "llvm.x86.avx2.pmadd.ub.sw", _W16, u, s)


def _madd(builder: ir.IRBuilder, a: ir.Value, b: ir.Value) -> ir.Value:
    return _x86(builder, "llvm.x86.avx2.pmadd.wd", _L8, a, b)


def _dpbusd(builder: ir.IRBuilder, acc: ir.Value, u: ir.Value, s: ir.Value) -> ir.Value:
    """acc + (lane k = Σ_{j<4} u[4k+j]·s[4k+j]), u unsigned and s signed bytes, no saturation.
    Declared with int32 operands, the form LLVM has always accepted (newer LLVMs upgrade it to
    their byte-vector form)."""
    return _x86(builder, "llvm.x86.avx512.vpdpbusd.256", _L8, acc, builder.bitcast(u, _L8), builder.bitcast(s, _L8))


def _dpwssd(builder: ir.IRBuilder, acc: ir.Value, a: ir.Value, b: ir.Value) -> ir.Value:
    """acc + ``vpmaddwd``(a, b): int16 pairs multiplied and added into int32 lanes, one instruction."""
    return _x86(builder, "llvm.x86.avx512.vpdpwssd.256", _L8, acc, builder.bitcast(a, _L8), builder.bitcast(b, _L8))


def _isa_of(t) -> str | None:
    """The set a token's numba type names (None: not a token, so the intrinsic does not apply)."""
    return _BY_DTYPE.get(str(t.dtype)) if isinstance(t, types.Array) and t.ndim == 1 else None


@intrinsic
def dot_biased(typingctx, isa, w, s, fix):
    """Signed bytes w · signed bytes s: lane k = Σ_{j<4} w[4k+j]·s[4k+j], given ``fix``: −128
    times each lane's sum of s. VNNI multiplies w + 128 (w xor 0x80, unsigned) by s in one
    ``vpdpbusd`` that starts at ``fix``: Σ(w + 128)·s − 128·Σs is Σw·s, with no sign moves (the
    xor of w is shared by every activation row it meets). AVX2 ignores ``fix``, moves w's sign
    onto s (``vpsignb``) and multiplies |w| unsigned, as ggml's ``mul_sum_i8_pairs_float``
    (exact while s has no −128: activation codes are within ±127). The same integers on every
    set."""
    name = _isa_of(isa)
    if name is None:
        return None

    def codegen(context, builder, sig, args):
        w, s, fix = args[1], args[2], args[3]
        if name == "vnni":
            return _dpbusd(builder, fix, builder.xor(w, _const_bytes(0x80)), s)
        if name == "avx2":
            aw = _x86(builder, "llvm.x86.avx2.psign.b", _B32, w, w)
            sy = _x86(builder, "llvm.x86.avx2.psign.b", _B32, s, w)
            return _madd(builder, _maddubs(builder, aw, sy), ir.Constant(_W16, [1] * 16))
        return _dot_us_portable(builder, w, s, True)

    return L8(isa, B32, B32, L8), codegen


@intrinsic
def dot_us(typingctx, isa, acc, u, s):
    """acc + unsigned bytes u · signed bytes s: lane k += Σ_{j<4} u[4k+j]·s[4k+j] (exact while a
    pair's sum fits int16, as it does for codes of at most 6 bits against int8 activations); VNNI
    adds in the same ``vpdpbusd``. With acc = −k times each lane's sum of s, this is (u − k)·s:
    Q4_0's and Q5_0's signed codes without subtracting k from them."""
    name = _isa_of(isa)
    if name is None:
        return None

    def codegen(context, builder, sig, args):
        acc, u, s = args[1], args[2], args[3]
        if name == "vnni":
            return _dpbusd(builder, acc, u, s)
        if name == "avx2":
            return builder.add(acc, _madd(builder, _maddubs(builder, u, s), ir.Constant(_W16, [1] * 16)))
        return builder.add(acc, _dot_us_portable(builder, u, s, False))

    return L8(isa, L8, B32, B32), codegen


@intrinsic
def dot_us_scaled(typingctx, isa, acc, u, s, lo, hi):
    """acc + ``dot_us`` with lanes 0..3 (bytes 0..15) times the integer ``lo`` and lanes 4..7
    times ``hi``: a K-quant's sub-block scales, applied as ggml applies them (``vpmaddwd`` of the
    byte pairs' int16 sums with the scales; VNNI's ``vpdpwssd`` adds that into ``acc`` in the
    same instruction)."""
    name = _isa_of(isa)
    if name is None:
        return None

    def codegen(context, builder, sig, args):
        acc, u, s = args[1], args[2], args[3]
        lo = context.cast(builder, args[4], sig.args[4], types.int32)
        hi = context.cast(builder, args[5], sig.args[5], types.int32)
        if name in ("avx2", "vnni"):
            lo16, hi16 = builder.trunc(lo, _I16), builder.trunc(hi, _I16)
            scales = builder.shuffle_vector(
                _splat(builder, lo16, 16),
                _splat(builder, hi16, 16),
                ir.Constant(ir.VectorType(_I32, 16), [0] * 8 + [16] * 8),
            )
            if name == "vnni":
                return _dpwssd(builder, acc, _maddubs(builder, u, s), scales)
            return builder.add(acc, _madd(builder, _maddubs(builder, u, s), scales))
        scales = builder.shuffle_vector(
            _splat(builder, lo, 8), _splat(builder, hi, 8), ir.Constant(ir.VectorType(_I32, 8), [0] * 4 + [8] * 4)
        )
        return builder.add(acc, builder.mul(_dot_us_portable(builder, u, s, False), scales))

    return L8(isa, L8, B32, B32, lo, hi), codegen


@intrinsic
def lanes_at(typingctx, a, i):
    """a[i:i+8] of an int32 array, as eight int32 lanes."""

    def codegen(context, builder, sig, args):
        return builder.load(_ptr(context, builder, sig.args[0], args[0], args[1], _L8), align=4)

    return L8(a, i), codegen


@intrinsic
def madd_sums(typingctx, sums, i, scales, j):
    """Lane k = sums[i+2k]·scales[j+2k] + sums[i+2k+1]·scales[j+2k+1]: sixteen int16 block sums
    of the activations against sixteen int8 scales of a row (Q6_K's −32 offset, as ggml's
    ``vpmaddwd`` of ``bsums`` and the scales computes it). Exact integers: one IR for every set."""

    def codegen(context, builder, sig, args):
        w16 = ir.VectorType(_I32, 16)
        a = builder.load(_ptr(context, builder, sig.args[0], args[0], args[1], ir.VectorType(_I16, 16)), align=2)
        b = builder.load(_ptr(context, builder, sig.args[2], args[2], args[3], ir.VectorType(_I8, 16)), align=1)
        p = builder.mul(builder.sext(a, w16), builder.sext(b, w16))
        return builder.add(_pick(builder, p, list(range(0, 16, 2))), _pick(builder, p, list(range(1, 16, 2))))

    return L8(sums, i, scales, j), codegen


# -- int32 lanes and the float side (no fast-math: one fixed order) --------------------------


@intrinsic
def izero(typingctx):
    """Eight int32 zeros."""

    def codegen(context, builder, sig, args):
        return ir.Constant(_L8, [0] * 8)

    return L8(), codegen


@intrinsic
def isub(typingctx, a, b):
    """a − b, lane by lane."""

    def codegen(context, builder, sig, args):
        return builder.sub(args[0], args[1])

    return L8(L8, L8), codegen


@intrinsic
def ishl(typingctx, a, k):
    """a << k, lane by lane (k a constant)."""
    if not isinstance(k, types.IntegerLiteral):
        return None

    def codegen(context, builder, sig, args):
        return builder.shl(args[0], ir.Constant(_L8, [sig.args[1].literal_value] * 8))

    return L8(L8, k), codegen


@intrinsic
def fma_lanes(typingctx, d, lanes, acc):
    """acc + d·float(lanes), one rounding (``llvm.fma``; ggml's ``_mm256_fmadd_ps``)."""

    def codegen(context, builder, sig, args):
        d = _splat(builder, context.cast(builder, args[0], sig.args[0], types.float32), 8)
        q = builder.sitofp(args[1], _F8)
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_F8, [_F8] * 3), "llvm.fma.v8f32")
        return builder.call(fn, [d, q, args[2]])

    return F8(d, L8, F8), codegen


@intrinsic
def fma1(typingctx, a, b, c):
    """a·b + c for float32 scalars, one rounding (``llvm.fma``)."""

    def codegen(context, builder, sig, args):
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_F, [_F] * 3), "llvm.fma.f32")
        return builder.call(fn, [context.cast(builder, v, t, types.float32) for v, t in zip(args, sig.args)])

    return types.float32(a, b, c), codegen


@intrinsic
def fzero(typingctx):
    """Eight float32 zeros."""

    def codegen(context, builder, sig, args):
        return ir.Constant(_F8, [0.0] * 8)

    return F8(), codegen


@intrinsic
def hsum(typingctx, a):
    """The lanes' sum in ggml's ``hsum_float_8`` order: 4 + 4, then 2 + 2, then 1 + 1."""

    def codegen(context, builder, sig, args):
        v, n = args[0], 8
        while n > 1:
            n //= 2
            v = builder.fadd(_pick(builder, v, list(range(n))), _pick(builder, v, list(range(n, 2 * n))))
        return builder.extract_element(v, ir.Constant(_I32, 0))

    return types.float32(F8), codegen


@intrinsic
def four(typingctx, a, b, c, d):
    """Four float32 scalars in lanes 0..3 (lanes 4..7 zero): ggml's 128-bit float lanes."""

    def codegen(context, builder, sig, args):
        v = ir.Constant(_F8, [0.0] * 8)
        for k, (x, t) in enumerate(zip(args, sig.args)):
            v = builder.insert_element(v, context.cast(builder, x, t, types.float32), ir.Constant(_I32, k))
        return v

    return F8(a, b, c, d), codegen


@intrinsic
def fma_splat(typingctx, d, v, acc):
    """acc + d·v lane by lane, one rounding (``llvm.fma``; ggml's ``_mm_fmadd_ps``)."""

    def codegen(context, builder, sig, args):
        s = _splat(builder, context.cast(builder, args[0], sig.args[0], types.float32), 8)
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_F8, [_F8] * 3), "llvm.fma.v8f32")
        return builder.call(fn, [s, args[1], args[2]])

    return F8(d, F8, F8), codegen


@intrinsic
def hsum4(typingctx, a):
    """Lanes 0..3's sum in ggml's order for a 128-bit vector: (0 + 2) + (1 + 3)."""

    def codegen(context, builder, sig, args):
        def lane(k: int) -> ir.Value:
            return builder.extract_element(args[0], ir.Constant(_I32, k))

        return builder.fadd(builder.fadd(lane(0), lane(2)), builder.fadd(lane(1), lane(3)))

    return types.float32(F8), codegen


@intrinsic
def ints8(typingctx, a0, a1, a2, a3, a4, a5, a6, a7):
    """Eight integers in int32 lanes 0..7."""

    def codegen(context, builder, sig, args):
        v = ir.Constant(_L8, [0] * 8)
        for k, (x, t) in enumerate(zip(args, sig.args)):
            v = builder.insert_element(v, context.cast(builder, x, t, types.int32), ir.Constant(_I32, k))
        return v

    return L8(a0, a1, a2, a3, a4, a5, a6, a7), codegen


@intrinsic
def min_products(typingctx, mins, sums, i):
    """Q4_K's min products in float lanes 0..3 (4..7 zero): lane k = mins[2k]·S[2k] +
    mins[2k+1]·S[2k+1], where S[j] = sums[i+2j] + sums[i+2j+1] is sub-block j's sum of 32 codes
    from sixteen int16 sums (ggml: ``vphaddw`` then ``vpmaddwd``). Exact integers, then float."""

    def codegen(context, builder, sig, args):
        w16 = ir.VectorType(_I32, 16)
        s = builder.sext(
            builder.load(_ptr(context, builder, sig.args[1], args[1], args[2], ir.VectorType(_I16, 16)), align=2), w16
        )
        sub = builder.add(_pick(builder, s, list(range(0, 16, 2))), _pick(builder, s, list(range(1, 16, 2))))
        p = builder.mul(args[0], sub)
        pairs = builder.add(_pick(builder, p, [0, 2, 4, 6]), _pick(builder, p, [1, 3, 5, 7]))
        wide = builder.shuffle_vector(
            pairs, ir.Constant(pairs.type, [0] * 4), ir.Constant(_L8, [0, 1, 2, 3, 4, 5, 6, 7])
        )
        return builder.sitofp(wide, _F8)

    return F8(L8, sums, i), codegen


@intrinsic
def half_at(typingctx, a, i):
    """The little-endian float16 at bytes a[i:i+2] of a uint8 array, as float32 (one ``vcvtph2ps``
    with F16C; exact, as every float16 is a float32)."""

    def codegen(context, builder, sig, args):
        raw = builder.load(_ptr(context, builder, sig.args[0], args[0], args[1], ir.IntType(16)), align=1)
        return builder.fpext(builder.bitcast(raw, ir.HalfType()), _F)

    return types.float32(a, i), codegen


@intrinsic
def bit_at(typingctx, b, k, to):
    """((b >> k) & 1) << to in every byte, k a run-time bit index (Q5_K's fifth-bit planes)."""
    if not isinstance(to, types.IntegerLiteral):
        return None

    def codegen(context, builder, sig, args):
        k8 = builder.trunc(context.cast(builder, args[1], sig.args[1], types.int64), _I8)
        bit = builder.and_(builder.lshr(args[0], _splat(builder, k8, 32)), _const_bytes(1))
        return builder.shl(bit, _const_bytes(sig.args[2].literal_value))

    return B32(B32, k, to), codegen


@intrinsic
def badd(typingctx, a, b):
    """a + b in every byte, wrapping."""

    def codegen(context, builder, sig, args):
        return builder.add(args[0], args[1])

    return B32(B32, B32), codegen
