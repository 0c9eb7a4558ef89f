"""How far the numpy samplers may be from diffusers' schedulers, derived, not guessed.

Both compute each step in float32, op by op in the same order, from the same inputs
(model outputs, samples, noise: bit-identical; ᾱ's: bit-identical, tested; σ's: two
ulps apart at most, tested). IEEE + - * / then agree bit for bit; torch's CPU sqrt, log
and exp (MKL) are within one ulp of exact and ours are correctly rounded. So the
result of a step differs between the two by at most the sum of their rounding errors.

:class:`Err` bounds those with a first-order *running error analysis* (Higham,
"Accuracy and Stability of Numerical Algorithms", 2nd ed., §3.3): it evaluates the
step's formula (written here from diffusers' source) in float64 and carries, for
every intermediate value v, a bound e on |fl(v) − v| for either implementation:

    a ± b:  e_a + e_b + u|v|             a · b:  |a| e_b + |b| e_a + u|v|
    a / b:  (e_a + |v| e_b) / |b| + u|v|  sqrt:  min(e_a / 2√a, √e_a) + 2u√a
    log a:  e_a / |a| + 2u|log a|         exp a:  e^a (e^{e_a} − 1) + 2u e^a

with u = 2⁻²⁴ (IEEE ops round to half an ulp ≤ u|v|; the library functions to within
one ulp ≤ 2u|v|). Inputs that are identical on both sides carry e = 0; a σ of the
schedule carries e = 4u|σ| (the roundings of its float32 (1 − ᾱ)/ᾱ, u, and sqrt, torch's
≤ 1.5u, then the float64 interpolation and one cast to float32, u: 3.5u; hence two ulps
apart at most, as tested).
Cancellation (h = λ_t − λ_s in DPM-Solver, x − D(x; σ) in Euler, σ_to² − σ_up² in
Euler ancestral) is where e grows beyond u|v|, and where a fixed tolerance fails.
Then |ours − theirs| ≤ 2e per element; the tests allow 2e + 1e-6 |theirs|.
"""

from __future__ import annotations

import math

import numpy as np

U = 2.0 ** -24
RTOL = 1e-6
SIGMA_ERR = 4 * U


def _clean(v, e):
    """Where v is inf or nan (log 0 at σ = 0, and what follows) both sides got it exactly: no error. Where
    e is nan, it came from 0 · inf, an exact zero times an unbounded error: none either."""
    if isinstance(v, float):
        return e if math.isfinite(v) and not math.isnan(e) else 0.0
    if np.isfinite(v).all() and not np.isnan(e).any():
        return e
    return np.where(np.isfinite(v), np.where(np.isnan(e), 0.0, e), 0.0)


class Err:
    """A value v (float64: a float, or an array) and a bound e on the rounding error of computing it in
    float32."""

    __slots__ = ("v", "e")
    __array_priority__ = 100  # numpy arrays on the left defer to Err's operators

    def __init__(self, v, e=0.0):
        if np.ndim(v) == 0 and np.ndim(e) == 0:  # scalars as Python floats: the schedule's arithmetic is fast
            self.v, self.e = float(v), float(e)
        else:
            self.v = np.asarray(v, np.float64)
            e = np.asarray(e, np.float64)
            self.e = e if e.shape == self.v.shape else np.broadcast_to(e, self.v.shape)
        self.e = _clean(self.v, self.e)

    @staticmethod
    def of(x) -> "Err":
        return x if isinstance(x, Err) else Err(x)

    def __add__(self, other):
        o = Err.of(other)
        v = self.v + o.v
        return Err(v, self.e + o.e + U * abs(v))

    __radd__ = __add__

    def __sub__(self, other):
        o = Err.of(other)
        v = self.v - o.v
        return Err(v, self.e + o.e + U * abs(v))

    def __rsub__(self, other):
        return Err.of(other) - self

    def __neg__(self):
        return Err(-self.v, self.e)

    def __mul__(self, other):
        o = Err.of(other)
        v = self.v * o.v
        return Err(v, abs(self.v) * o.e + abs(o.v) * self.e + U * abs(v))

    __rmul__ = __mul__

    def __truediv__(self, other):
        o = Err.of(other)
        if isinstance(o.v, float) and o.v == 0.0 and isinstance(self.v, float):  # h = 0 exactly: inf or nan, IEEE
            if self.v == 0 or math.isnan(self.v):
                return Err(math.nan)
            return Err(math.copysign(math.inf, self.v) * math.copysign(1.0, o.v))
        v = self.v / o.v
        return Err(v, (self.e + abs(v) * o.e) / abs(o.v) + U * abs(v))

    def __rtruediv__(self, other):
        return Err.of(other) / self


def sqrt(a: Err) -> Err:
    if isinstance(a.v, float):
        v = math.sqrt(max(a.v, 0.0))
        return Err(v, min(a.e / (2 * v) if v > 0 else math.inf, math.sqrt(a.e)) + 2 * U * v)
    v = np.sqrt(np.maximum(a.v, 0.0))
    first_order = np.where(v > 0, a.e / np.where(v > 0, 2 * v, 1.0), np.inf)
    return Err(v, np.minimum(first_order, np.sqrt(a.e)) + 2 * U * v)


def log(a: Err) -> Err:
    if isinstance(a.v, float):
        v = math.log(a.v) if a.v > 0 else (-math.inf if a.v == 0 else math.nan)
        return Err(v, (a.e / abs(a.v) if a.e < abs(a.v) else math.inf) + 2 * U * abs(v))
    v = np.log(a.v)
    return Err(v, np.where(a.e < np.abs(a.v), a.e / np.abs(a.v), np.inf) + 2 * U * np.abs(v))


def exp(a: Err) -> Err:
    if isinstance(a.v, float):
        v = math.exp(a.v) if a.v < 700 else math.inf
        return Err(v, v * math.expm1(min(a.e, 700.0)) + 2 * U * v)
    v = np.exp(a.v)
    return Err(v, v * np.expm1(a.e) + 2 * U * v)


def schedule_sigma(sigma) -> Err:
    """A σ of the schedule: within SIGMA_ERR relative of exact on either side (see the module docstring)."""
    return Err(sigma, SIGMA_ERR * np.abs(np.asarray(sigma, np.float64)))


def ulps_apart(a: np.ndarray, b: np.ndarray) -> int:
    """The largest distance between float32 arrays in units in the last place (0 when identical)."""
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    ia, ib = a.view(np.int32).astype(np.int64), b.view(np.int32).astype(np.int64)
    ia, ib = np.where(ia < 0, -(ia & 0x7FFFFFFF), ia), np.where(ib < 0, -(ib & 0x7FFFFFFF), ib)
    return int(np.max(np.abs(ia - ib), initial=0))


def assert_within(actual: np.ndarray, desired: np.ndarray, bound: Err, what: str) -> None:
    """|actual − desired| ≤ 2 e + RTOL |desired| per element (matching inf/nan count as equal)."""
    assert actual.dtype == np.float32, f"{what}: dtype {actual.dtype}"
    desired = np.asarray(desired, np.float32)
    assert actual.shape == desired.shape, f"{what}: shape {actual.shape} vs {desired.shape}"
    allowed = 2 * np.broadcast_to(bound.e, desired.shape) + RTOL * np.abs(desired.astype(np.float64))
    diff = np.abs(actual.astype(np.float64) - desired)
    ok = (diff <= allowed) | (actual == desired) | (np.isnan(actual) & np.isnan(desired))
    if not ok.all():
        i = np.unravel_index(np.argmax(np.where(ok, -np.inf, diff - allowed)), ok.shape)
        raise AssertionError(f"{what}: {int((~ok).sum())}/{ok.size} elements differ; worst at {i}: "
                             f"{actual[i]!r} vs {desired[i]!r}, allowed {allowed[i]:.3g}")


def relative_bound(bound: Err) -> float:
    """The median of 2e/|v| (inf where e is): how tight a bound is, a check that it is not vacuous."""
    r = np.where(bound.e == 0, 0.0, 2 * bound.e / np.abs(bound.v))
    return float(np.median(np.where(np.isnan(r), np.inf, r)))


# --- the steps' error bounds, each written from diffusers' own formula --------------------------


def scale_input_bound(sample, sigma: Err) -> Err:
    """Euler's ``scale_model_input``: x / sqrt(σ² + 1)."""
    return Err(sample) / sqrt(sigma * sigma + 1.0)


def pndm_bound(sample, model_output, a: Err, a_prev: Err, v_prediction: bool) -> Err:
    """``PNDMScheduler._get_prev_sample`` (formula 9), from the arguments diffusers called it with."""
    x, m = Err(sample), Err(model_output)
    b, b_prev = 1.0 - a, 1.0 - a_prev
    if v_prediction:
        m = sqrt(a) * m + sqrt(b) * x
    coeff = sqrt(a_prev / a)
    denom = a * sqrt(b_prev) + sqrt(a * b * a_prev)
    return coeff * x - (a_prev - a) * m / denom


def _alpha_sigma(sigma: Err) -> tuple[Err, Err]:
    alpha = 1.0 / sqrt(sigma * sigma + 1.0)
    return alpha, sigma * alpha


def _lambda(sigma: Err) -> Err:
    alpha, sigma_t = _alpha_sigma(sigma)
    return log(alpha) - log(sigma_t)


def dpm_x0_bound(model_output, sample, sigma: Err, prediction_type: str) -> Err:
    """``DPMSolverMultistepScheduler.convert_model_output`` (dpmsolver++)."""
    alpha, sigma_t = _alpha_sigma(sigma)
    x, m = Err(sample), Err(model_output)
    if prediction_type == "epsilon":
        return (x - sigma_t * m) / alpha
    if prediction_type == "v_prediction":
        return alpha * x - sigma_t * m
    return m


def threshold_bound(x0: Err, thresholded) -> Err:
    """clip(x_0, −s, s) / s with s ≥ 1 a quantile of |x_0|, which moves by at most max e (1-Lipschitz)
    plus its own rounding: |Δ| ≤ e + 2 (max e + 2u s) / s + u ≤ e + 2 max e + 5u."""
    return Err(thresholded, x0.e + 2 * np.max(x0.e) + 5 * U)


def dpm_update_bound(order: int, sample, m: list[Err], s: list[Err], solver_type: str) -> Err:
    """The three updates of ``DPMSolverMultistepScheduler`` (dpmsolver++); ``m``: x_θ's, newest last;
    ``s``: [σ_{i+1}, σ_i, σ_{i−1}, σ_{i−2}]."""
    x = Err(sample)
    alpha_t, sigma_t = _alpha_sigma(s[0])
    _, sigma_s0 = _alpha_sigma(s[1])
    lam = [_lambda(v) for v in s[:order + 1]]
    h = lam[0] - lam[1] if s[0].v != s[1].v else Err(0.0)  # σ_min to σ_min: exactly 0 on both sides
    phi_1 = alpha_t * (exp(-h) - 1.0)
    if order == 1:
        return (sigma_t / sigma_s0) * x - phi_1 * m[-1]
    h_0 = lam[1] - lam[2]
    r0 = h_0 / h
    D1_0 = (1.0 / r0) * (m[-1] - m[-2])
    if order == 2 and solver_type == "midpoint":
        return (sigma_t / sigma_s0) * x - phi_1 * m[-1] - (0.5 * phi_1) * D1_0
    if order == 2:
        return (sigma_t / sigma_s0) * x - phi_1 * m[-1] + (alpha_t * ((exp(-h) - 1.0) / h + 1.0)) * D1_0
    r1 = (lam[2] - lam[3]) / h
    D1_1 = (1.0 / r1) * (m[-2] - m[-3])
    D1 = D1_0 + (r0 / (r0 + r1)) * (D1_0 - D1_1)
    D2 = (1.0 / (r0 + r1)) * (D1_0 - D1_1)
    return ((sigma_t / sigma_s0) * x - phi_1 * m[-1] + (alpha_t * ((exp(-h) - 1.0) / h + 1.0)) * D1
            - (alpha_t * ((exp(-h) - 1.0 + h) / (h * h) - 0.5)) * D2)


def _denoised(m: Err, x: Err, sigma: Err, sigma_hat: Err, prediction_type: str) -> Err:
    if prediction_type == "epsilon":
        return x - sigma_hat * m
    if prediction_type == "v_prediction":
        return m * (-sigma / sqrt(sigma * sigma + 1.0)) + (x / (sigma * sigma + 1.0))
    return m


def euler_bound(model_output, sample, sigma: Err, sigma_next: Err, prediction_type: str,
                gamma: float = 0.0, noise=None, s_noise: float = 1.0) -> Err:
    """``EulerDiscreteScheduler.step``."""
    x, m = Err(sample), Err(model_output)
    sigma_hat = sigma * (gamma + 1.0)
    if gamma > 0:
        x = x + (Err(noise) * s_noise) * sqrt(sigma_hat * sigma_hat - sigma * sigma)
    derivative = (x - _denoised(m, x, sigma, sigma_hat, prediction_type)) / sigma_hat
    return x + derivative * (sigma_next - sigma_hat)


def euler_ancestral_bound(model_output, sample, sigma_from: Err, sigma_to: Err, noise, prediction_type: str) -> Err:
    """``EulerAncestralDiscreteScheduler.step``."""
    x, m = Err(sample), Err(model_output)
    pred = _denoised(m, x, sigma_from, sigma_from, prediction_type)
    sigma_up = sqrt(sigma_to * sigma_to * (sigma_from * sigma_from - sigma_to * sigma_to) / (sigma_from * sigma_from))
    sigma_down = sqrt(sigma_to * sigma_to - sigma_up * sigma_up)
    prev = x + ((x - pred) / sigma_from) * (sigma_down - sigma_from)
    return prev + Err(noise) * sigma_up
