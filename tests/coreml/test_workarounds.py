"""Each conversion workaround: its minimal failing case still fails without it (with the known message) --
when upstream fixes the bug this test fails, and the workaround can go -- and converts with it, computing what
torch computes (checked with the reference evaluator). The registry is restored after use."""

from __future__ import annotations

import numpy as np
import pytest

from ldm_export.targets.coreml.workarounds import WORKAROUNDS, applied
from ldm_runtime.runners.coreml_reference.evaluate import evaluate
from ldm_runtime.runners.coreml_reference.program import from_mil

torch = pytest.importorskip("torch")


class Alias(torch.nn.Module):
    """CLIP's ``position_ids[:, :seq_length]``: a full-range slice of a buffer, which torch 2.13 exports as
    ``aten.alias``."""

    def __init__(self):
        super().__init__()
        self.register_buffer("pos", torch.arange(8).expand((1, -1)), persistent=False)

    def forward(self, x):
        return x + self.pos[:, : x.shape[1]].to(x.dtype)


class CodebookSearch(torch.nn.Module):
    """diffusers' ``VectorQuantizer``: the nearest codebook entry by ``torch.cdist``."""

    def __init__(self):
        super().__init__()
        self.codebook = torch.nn.Parameter(torch.randn(16, 3, generator=torch.Generator().manual_seed(0)))

    def forward(self, z):
        return torch.cdist(z, self.codebook)


MINIMAL = {  # workaround -> (module, example input with a dynamic batch)
    "alias": (Alias(), torch.randn(2, 8)),
    "group_norm_symbolic_batch": (torch.nn.GroupNorm(2, 4).eval(), torch.randn(2, 4, 3, 5)),
    "cdist": (CodebookSearch(), torch.randn(5, 3)),
}


def _convert(name: str):
    import coremltools as ct

    module, x = MINIMAL[name]
    program = torch.export.export(module, (x,), dynamic_shapes=({0: torch.export.Dim.AUTO},)).run_decompositions({})
    return ct.convert(program, convert_to="milinternal", minimum_deployment_target=ct.target.macOS14,
                      compute_precision=ct.precision.FLOAT32)


def test_every_workaround_has_a_minimal_case():
    assert {w.name for w in WORKAROUNDS} == set(MINIMAL)


@pytest.mark.parametrize("workaround", WORKAROUNDS, ids=lambda w: w.name)
def test_still_needed(workaround):
    """Without the workaround the minimal case fails as recorded; if this fails, upstream fixed it."""
    with pytest.raises(Exception, match=workaround.symptom):
        _convert(workaround.name)


@pytest.mark.parametrize("workaround", WORKAROUNDS, ids=lambda w: w.name)
@pytest.mark.parametrize("batch", [2, 1, 5])
def test_converts_with_it(workaround, batch):
    with applied((workaround.name,)):
        mil = _convert(workaround.name)
    module, x = MINIMAL[workaround.name]
    x = torch.randn(batch, *x.shape[1:], generator=torch.Generator().manual_seed(batch))
    program = from_mil(mil, workaround.name)
    got = next(iter(evaluate(program, {next(iter(program.inputs)): x.numpy()}).values()))
    with torch.no_grad():
        want = module(x).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_registry_restored_even_after_an_error():
    from coremltools.converters.mil.frontend.torch.torch_op_registry import _TORCH_OPS_REGISTRY

    before = dict(_TORCH_OPS_REGISTRY.name_to_func_mapping)
    with pytest.raises(RuntimeError), applied():
        assert _TORCH_OPS_REGISTRY.name_to_func_mapping["alias"] is not before.get("alias")
        raise RuntimeError("conversion failed")
    assert _TORCH_OPS_REGISTRY.name_to_func_mapping == before
