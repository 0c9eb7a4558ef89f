"""Initial and per-step noise without torch.

A diffusers pipeline run with ``generator=torch.Generator().manual_seed(s)`` draws
its latents (and, for DDIM with eta > 0 or ancestral samplers, its per-step noise)
with ``torch.randn(shape, generator=g, dtype=torch.float32)`` on the CPU.
:class:`TorchCompatGenerator` reproduces that stream bit for bit with numpy only,
so a seed means the same image here as in diffusers. :class:`NumpyGenerator` is
the plain alternative (``--noise numpy``) when torch parity does not matter.

The algorithm (PyTorch 2.x, ``CPUGeneratorImpl`` + ``normal_kernel``):

1. Seed. ``manual_seed(s)`` builds an mt19937 engine from the *low 32 bits* of the
   64-bit seed (``state[0] = s & 0xffffffff``; Knuth's ``init_genrand``
   recurrence for the other 623 words), so seeds equal modulo 2**32 (and -1 and
   2**64-1) give the same stream. The first draw twists the state, as in the
   reference mt19937, so numpy's ``MT19937`` bit generator loaded with that key at
   ``pos = 624`` yields the identical 32-bit stream (``random_raw``).
2. Uniforms. A float32 uniform keeps the *low* 24 bits of one 32-bit draw:
   ``u = (r & 0xffffff) * 2**-24`` in [0, 1). A float64 uniform takes two draws
   ``hi, lo``, forms ``(hi << 32) | lo`` and keeps the low 53 bits times 2**-53.
3. Tensors of >= 16 elements (``normal_fill``): draw one float32 uniform per
   element, then Box-Muller each block of 16 in place: with ``a = u[0:8]``,
   ``b = u[8:16]``, ``r = sqrt(-2 log(1 - a))``, ``t = 2 pi b``, the block becomes
   ``[r cos t, r sin t]``. If 16 does not divide n, draw 16 *more* uniforms and
   overwrite the last 16 outputs with their block, so n + 16 draws are used.
4. Float math of step 3. x86-64 torch runs the AVX2 kernel (AVX512 machines too:
   ``normal_stub`` is registered without an AVX512 variant): ``log`` and
   ``sincos`` are the Cephes polynomials of ``avx_mathfun.h`` in float32, and
   GCC fuses each ``a * b`` that feeds an add into one FMA. We replay these
   operations one by one in numpy float32, emulating each FMA exactly (float64
   product, then a round-to-odd sum, then one rounding to float32). Only IEEE
   +, -, *, sqrt are used, so the result is the same on any machine. Builds
   without AVX2 (aarch64, ``ATEN_CPU_CAPABILITY=default``) use libm ``logf``,
   ``cosf``, ``sinf`` instead: ``kernel="scalar"`` approximates those by
   rounding float64 results to float32.
5. Tensors of < 16 elements: one ``normal_distribution<double>`` sample per
   element: two float64 uniforms ``u1, u2``, ``r = sqrt(-2 log1p(-u2))``,
   ``t = 2 pi u1``; return ``r cos t`` and cache ``r sin t`` in the generator.
   The cache is returned by the *next* scalar draw (even in a later ``randn``
   call) and is untouched by step 3; ``manual_seed`` clears it.
"""

from __future__ import annotations

import math
from typing import Protocol

import numpy as np

from ldm_runtime.errors import UserError
from ldm_runtime.fma import fma_float32

_F32 = np.float32
_F64 = np.float64

NOISE_KINDS = ("torch", "numpy")
TORCH_KERNELS = ("avx2", "scalar")


class NoiseGenerator(Protocol):
    """What the samplers need: successive float32 standard-normal draws."""

    def randn(self, shape: tuple[int, ...]) -> np.ndarray: ...


# ---------------------------------------------------------------- step 1: seeding


def _mt19937_key(seed: int) -> np.ndarray:
    """torch's ``mt19937_engine::init_with_uint32``: Knuth's recurrence on the low 32 bits."""
    key = [seed & 0xFFFFFFFF]
    for j in range(1, 624):
        prev = key[-1]
        key.append((1812433253 * (prev ^ (prev >> 30)) + j) & 0xFFFFFFFF)
    return np.array(key, dtype=np.uint32)


def _check_seed(seed: int) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise UserError(f"seed must be an integer, got {seed!r}")
    seed = int(seed)
    if not -(2**63) <= seed < 2**64:
        raise UserError(f"seed must be in [-2**63, 2**64), got {seed}")
    return seed


def _check_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    shape = (int(shape),) if isinstance(shape, (int, np.integer)) else tuple(int(d) for d in shape)
    if any(d < 0 for d in shape):
        raise ValueError(f"negative dimension in shape {shape}")
    return shape


# ------------------------------------------------------- step 4: AVX2 float math (FMA: ldm_runtime.fma)

# Cephes float32 coefficients, as in ATen/native/cpu/avx_mathfun.h.
_LOG_P = tuple(_F32(v) for v in (
    7.0376836292e-2, -1.1514610310e-1, 1.1676998740e-1, -1.2420140846e-1, 1.4249322787e-1,
    -1.6668057665e-1, 2.0000714765e-1, -2.4999993993e-1, 3.3333331174e-1,
))
_LOG_Q1, _LOG_Q2 = _F32(-2.12194440e-4), _F32(0.693359375)
_SQRTHF = _F32(0.707106781186547524)
_DP = (_F32(-0.78515625), _F32(-2.4187564849853515625e-4), _F32(-3.77489497744594108e-8))
_COS_C = (_F32(2.443315711809948e-5), _F32(-1.388731625493765e-3), _F32(4.166664568298827e-2))
_SIN_C = (_F32(-1.9515295891e-4), _F32(8.3321608736e-3), _F32(-1.6666654611e-1))
_FOPI = _F32(1.27323954473516)  # 4 / pi
_TWO_PI_F32 = _F32(2.0 * math.pi)
_ONE, _HALF, _ZERO = _F32(1.0), _F32(0.5), _F32(0.0)


def _log256(x: np.ndarray) -> np.ndarray:
    """``log256_ps``: natural log of float32 ``x > 0`` (frexp, then a degree-9 polynomial)."""
    x = np.maximum(x, _F32(np.finfo(_F32).tiny))
    bits = x.view(np.int32)
    e = ((bits >> 23) - 127).astype(_F32) + _ONE
    x = ((bits & ~0x7F800000) | 0x3F000000).view(_F32)  # mantissa in [0.5, 1)
    small = x < _SQRTHF  # x < sqrt(1/2): use 2x - 1 and e - 1
    x = (x - _ONE) + np.where(small, x, _ZERO)
    e = e - np.where(small, _ONE, _ZERO)
    z = x * x
    y = np.full_like(x, _LOG_P[0])
    for p in _LOG_P[1:]:
        y = fma_float32(y, x, p)
    y = y * x
    y = fma_float32(y, z, e * _LOG_Q1)
    y = y - z * _HALF
    return fma_float32(e, _LOG_Q2, x + y)


def _sincos256(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``sincos256_ps``: octant reduction (3-part Cody-Waite 4/pi) and two polynomials."""
    sign_sin = np.signbit(x)
    x = np.abs(x)
    j = (x * _FOPI).astype(np.int32)  # cvttps: truncate
    j = (j + 1) & ~1
    y = j.astype(_F32)
    sign_sin ^= (j & 4) != 0
    sign_cos = (~(j - 2) & 4) != 0
    use_cos_poly_for_sin = (j & 2) != 0
    for dp in _DP:
        x = fma_float32(y, dp, x)
    z = x * x
    yc = fma_float32(np.full_like(z, _COS_C[0]), z, _COS_C[1])
    yc = fma_float32(yc, z, _COS_C[2])
    yc = yc * z
    yc = fma_float32(yc, z, -(z * _HALF)) + _ONE
    ys = fma_float32(np.full_like(z, _SIN_C[0]), z, _SIN_C[1])
    ys = fma_float32(ys, z, _SIN_C[2])
    ys = fma_float32(ys * z, x, x)
    # The kernel blends with and/andnot, then adds a zero: -0.0 becomes +0.0.
    s = np.where(use_cos_poly_for_sin, yc, ys) + _ZERO
    c = np.where(use_cos_poly_for_sin, ys, yc) + _ZERO
    return np.where(sign_sin, -s, s), np.where(sign_cos, -c, c)


def _box_muller_avx2(u: np.ndarray) -> np.ndarray:
    """``NormalFill16<float>`` AVX2 specialisation on a (k, 16) block of uniforms."""
    radius = np.sqrt(_F32(-2.0) * _log256(_ONE - u[:, :8]))
    sin_t, cos_t = _sincos256(_TWO_PI_F32 * u[:, 8:])
    return np.concatenate([radius * cos_t, radius * sin_t], axis=1)


def _box_muller_scalar(u: np.ndarray) -> np.ndarray:
    """Generic ``NormalFill16<float>`` (libm ``logf/cosf/sinf``, approximated as rounded float64)."""
    radius = np.sqrt(_F32(-2.0) * np.log((_ONE - u[:, :8]).astype(_F64)).astype(_F32))
    theta = (_F64(2.0 * math.pi) * u[:, 8:].astype(_F64)).astype(_F32)
    t = theta.astype(_F64)
    return np.concatenate([radius * np.cos(t).astype(_F32), radius * np.sin(t).astype(_F32)], axis=1)


# -------------------------------------------------------------- the generators


class TorchCompatGenerator:
    """``torch.randn(shape, generator=torch.Generator().manual_seed(seed))`` on CPU, torch-free.

    Successive :meth:`randn` calls consume the stream exactly as successive
    ``torch.randn`` calls on one generator do. ``kernel="avx2"`` (default) matches
    torch on x86-64; ``"scalar"`` approximates torch builds without AVX2 (aarch64).
    """

    def __init__(self, seed: int, *, kernel: str = "avx2") -> None:
        if kernel not in TORCH_KERNELS:
            raise UserError(f"unknown torch noise kernel {kernel!r}; valid: {', '.join(TORCH_KERNELS)}")
        self.seed = _check_seed(seed)
        self.kernel = kernel
        self._box_muller = _box_muller_avx2 if kernel == "avx2" else _box_muller_scalar
        self._bits = np.random.MT19937(0)
        self._bits.state = {
            "bit_generator": "MT19937",
            "state": {"key": _mt19937_key(self.seed), "pos": 624},  # step 1
        }
        self._cached_normal: float | None = None  # torch's next_double_normal_sample_

    def randn(self, shape: tuple[int, ...]) -> np.ndarray:
        shape = _check_shape(shape)
        n = math.prod(shape)
        out = self._normal_fill(n) if n >= 16 else self._normal_serial(n)
        return out.reshape(shape)

    def _uniform_f32(self, n: int) -> np.ndarray:
        """Step 2: low 24 bits of each 32-bit draw, times 2**-24 (exact in float32)."""
        return (self._bits.random_raw(n) & 0xFFFFFF).astype(_F32) * _F32(2.0**-24)

    def _normal_fill(self, n: int) -> np.ndarray:
        """Step 3: blocks of 16; a ragged tail redraws and overwrites the last 16."""
        blocks = n // 16
        u = self._uniform_f32(n)[: blocks * 16].reshape(blocks, 16)
        out = self._box_muller(u).reshape(-1)
        if n % 16:
            tail = self._box_muller(self._uniform_f32(16).reshape(1, 16)).reshape(-1)
            out = np.concatenate([out[: n - 16], tail])
        return out

    def _uniform_f64(self) -> float:
        """Step 2: ``random64() = hi << 32 | lo``, low 53 bits times 2**-53."""
        hi, lo = (int(v) for v in self._bits.random_raw(2))
        return (((hi & 0x1FFFFF) << 32) | lo) * 2.0**-53

    def _normal_serial(self, n: int) -> np.ndarray:
        """Step 5: ``normal_distribution<double>`` per element, with the cached second sample."""
        out = np.empty(n, dtype=_F32)
        for i in range(n):
            if self._cached_normal is not None:
                value, self._cached_normal = self._cached_normal, None
            else:
                u1 = self._uniform_f64()
                u2 = self._uniform_f64()
                r = math.sqrt(-2.0 * math.log1p(-u2))
                theta = 2.0 * math.pi * u1
                self._cached_normal = r * math.sin(theta)
                value = r * math.cos(theta)
            out[i] = value  # mean 0, std 1: value * 1 + 0 is exact; one rounding to float32
        return out


class NumpyGenerator:
    """numpy's own PCG64 normals: fast and portable, but not torch's stream."""

    def __init__(self, seed: int) -> None:
        self.seed = _check_seed(seed)
        self._rng = np.random.default_rng(self.seed % 2**64)

    def randn(self, shape: tuple[int, ...]) -> np.ndarray:
        return self._rng.standard_normal(_check_shape(shape), dtype=_F32)


def make_generator(kind: str, seed: int) -> TorchCompatGenerator | NumpyGenerator:
    """``"torch"``: torch's CPU ``randn`` stream; ``"numpy"``: numpy's ``default_rng``."""
    if kind == "torch":
        return TorchCompatGenerator(seed)
    if kind == "numpy":
        return NumpyGenerator(seed)
    raise UserError(f"unknown noise kind {kind!r}; valid kinds: {', '.join(NOISE_KINDS)}")
