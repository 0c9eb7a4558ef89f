"""The torch-free noise generator, torch-free: against torch.randn streams recorded by the build side
(tests/fixtures.py), and its own contract (determinism, seeds, kinds)."""

from __future__ import annotations

import platform
import sys
import time

import numpy as np
import pytest

from ldm_runtime.errors import UserError
from ldm_runtime.noise import NumpyGenerator, TorchCompatGenerator, make_generator
from tests.fixtures import NOISE_SEEDS, NOISE_SHAPES


@pytest.fixture(scope="module")
def oracle(runtime_fixtures):
    with np.load(runtime_fixtures / "noise.npz") as z:
        return {k: z[k] for k in z.files}


@pytest.mark.parametrize("seed", NOISE_SEEDS)
def test_successive_draws_reproduce_the_recorded_torch_stream(oracle, seed):
    """Latents, per-step noise and small draws (a < 16-element draw leaves a cached normal in the generator that
    the next small draw uses): bit for bit where torch ran its AVX2 kernel, which the default kernel replays."""
    avx2 = str(oracle["capability"]) in ("AVX2", "AVX512") and platform.machine().lower() in ("x86_64", "amd64") \
        and sys.platform.startswith("linux")
    ours = TorchCompatGenerator(seed, kernel="avx2" if avx2 else "scalar")
    for i, shape in enumerate(NOISE_SHAPES):
        got, ref = ours.randn(shape), oracle[f"{seed}/{i}"]
        assert got.dtype == np.float32 and got.shape == ref.shape
        assert float(np.abs(got.astype(np.float64) - ref).max()) <= 1e-6
        if avx2:
            assert np.array_equal(got.view(np.uint32), ref.view(np.uint32)), shape


def test_only_the_low_32_seed_bits_matter():
    a, b = TorchCompatGenerator(5).randn((40,)), TorchCompatGenerator(2**32 + 5).randn((40,))
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(TorchCompatGenerator(-1).randn((20,)), TorchCompatGenerator(2**64 - 1).randn((20,)))
    assert not np.array_equal(a, TorchCompatGenerator(6).randn((40,)))


def test_a_large_draw_is_fast():
    g = TorchCompatGenerator(0)
    g.randn((1, 4, 64, 64))
    t0 = time.perf_counter()
    g.randn((1, 4, 64, 64))
    assert time.perf_counter() - t0 < 0.5  # a few ms in practice; generous for shared CI


def test_numpy_kind_is_deterministic_per_seed():
    a, b = make_generator("numpy", 7), make_generator("numpy", 7)
    assert isinstance(a, NumpyGenerator)
    first = a.randn((1, 4, 8, 8))
    assert first.dtype == np.float32 and first.shape == (1, 4, 8, 8)
    np.testing.assert_array_equal(first, b.randn((1, 4, 8, 8)))
    np.testing.assert_array_equal(a.randn((2, 5)), b.randn((2, 5)))  # successive draws too
    assert not np.array_equal(first, make_generator("numpy", 8).randn((1, 4, 8, 8)))
    np.testing.assert_array_equal(first, np.random.default_rng(7).standard_normal((1, 4, 8, 8), dtype=np.float32))


@pytest.mark.parametrize("kind", ["cuda", "Torch", ""])
def test_unknown_kind_is_a_user_error(kind):
    with pytest.raises(UserError, match="torch, numpy") as info:
        make_generator(kind, 0)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("seed", [2**64, -(2**63) - 1, 1.5, "3", True])
def test_bad_seed_is_a_user_error(seed):
    with pytest.raises(UserError):
        TorchCompatGenerator(seed)
