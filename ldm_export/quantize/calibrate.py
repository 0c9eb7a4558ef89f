"""Activation ranges for static int8: computed once with ONNX Runtime's calibrators, reused for any choice
of quantized nodes (:mod:`.mixed` relies on that)."""

from __future__ import annotations

import contextlib
import io
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Sequence

from ldm_runtime.errors import UserError

from ..onnx_io import external_data_files, save
from .common import Feeds, Report, _say, ensure_node_names, session_options, weighted_nodes

CALIBRATION_METHODS = ("minmax", "percentile", "entropy")
DEFAULT_CALIBRATION = "minmax"
DEFAULT_PERCENTILE = 99.999


@dataclass
class Calibration:
    """Activation ranges of the inputs of the weighted nodes of one model, computed once."""

    method: str
    ranges: object                   # onnxruntime.quantization.TensorsData
    feeds: int
    options: dict = field(default_factory=dict)
    seconds: float = 0.0

    def describe(self) -> dict:
        return {"method": self.method, "feeds": self.feeds, "tensors": len(self.ranges.data),
                "options": self.options, "seconds": round(self.seconds, 2)}


class _Reader:
    """onnxruntime.quantization.CalibrationDataReader over a list of feeds."""

    def __init__(self, feeds: Feeds, names: Sequence[str]):
        self._feeds = [{k: f[k] for k in names} for f in feeds]
        self._i = 0

    def get_next(self):
        if self._i >= len(self._feeds):
            return None
        self._i += 1
        return self._feeds[self._i - 1]

    def __len__(self):
        return len(self._feeds)


@contextlib.contextmanager
def _quiet_logging():
    """ORT's quantize_* log a pre-processing advice as warnings on the root logger; silence them meanwhile."""
    import logging

    before = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(before)


def _typed_model(path: Path):
    """The model with shape inference applied and node names ensured, as ORT's quantizer wants it."""
    from onnxruntime.quantization.quant_utils import add_infer_metadata, load_model_with_shape_infer

    model = load_model_with_shape_infer(Path(path))
    ensure_node_names(model)
    add_infer_metadata(model)
    return model


def calibrate(onnx_in: str | Path, feeds: Feeds, *, method: str = DEFAULT_CALIBRATION,
              percentile: float = DEFAULT_PERCENTILE, threads: int | None = None, report: Report = None,
              every_op: bool = False, conv_outputs: bool = False) -> Calibration:
    """Ranges of the activation inputs of the weighted nodes over ``feeds``, with ORT's calibrators.

    ``minmax``: the largest |x| seen (reduced inside the graph: only two scalars per tensor leave ORT);
    ``percentile``: the ``percentile``-th percentile of |x| (2048-bin histogram); ``entropy``: the threshold
    minimising the KL divergence between the histogram and its int8 version (2048 bins, 128 quantized bins:
    TensorRT's entropy calibration). The histograms are fed one feed at a time (ORT's calibrators otherwise keep
    every intermediate of every feed in memory). The quantizer makes every range symmetric (max(|min|, |max|)).
    ``every_op``: ranges for the inputs and outputs of every node instead (for quantizing all op types).
    ``conv_outputs``: also the outputs of the Conv nodes that are not graph outputs (``layout="ort-cpu"``)."""
    import onnxruntime as ort
    from onnxruntime.quantization.calibrate import EntropyCalibrater, MinMaxCalibrater, PercentileCalibrater

    if method not in CALIBRATION_METHODS:
        raise UserError(f"calibration method '{method}' is unknown; available: {', '.join(CALIBRATION_METHODS)}")
    feeds = list(feeds)
    if not feeds:
        raise UserError("calibration needs at least one feed")
    t0 = time.perf_counter()
    # entropy: TensorRT's setting (2048-bin histogram, 128 quantized bins); ORT's default of 128/128 leaves no
    # threshold to search and returns the min/max range
    options = ({"percentile": percentile, "symmetric": True, "num_bins": 2048} if method == "percentile"
               else {"num_bins": 2048, "num_quantized_bins": 128} if method == "entropy" else {})
    _say(report, f"calibrating ({method}) on {len(feeds)} feeds")
    with tempfile.TemporaryDirectory(prefix="ldm-quant-") as tmp:
        typed = _typed_model(Path(onnx_in))
        weighted = {w.name for w in weighted_nodes(typed)}
        wanted = {n.input[0] for n in typed.graph.node if n.name in weighted}
        if conv_outputs:
            wanted |= _conv_outputs(typed, weighted)
        src = Path(tmp) / "model.onnx"
        save(typed, src, external=bool(external_data_files(onnx_in)))
        del typed
        aug = str(Path(tmp) / "augmented.onnx")
        if method == "minmax":
            cal = MinMaxCalibrater(src, None, aug, use_external_data_format=True)
        elif method == "percentile":
            cal = PercentileCalibrater(src, None, aug, use_external_data_format=True, **options)
        else:
            cal = EntropyCalibrater(src, None, aug, use_external_data_format=True, **options)
        if not every_op:
            select = cal.select_tensors_to_calibrate

            def only_weighted_inputs(model):
                tensors, infos = select(model)
                return tensors & wanted, infos

            cal.select_tensors_to_calibrate = only_weighted_inputs
        with contextlib.redirect_stdout(io.StringIO()):  # the histogram calibrators print progress
            cal.augment_graph()
            so = session_options(threads)
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
            cal.infer_session = ort.InferenceSession(aug, so, providers=["CPUExecutionProvider"])
            names = [i.name for i in cal.infer_session.get_inputs()]
            if method == "minmax":
                cal.collect_data(_Reader(feeds, names))
            else:
                for f in feeds:
                    cal.collect_data(_Reader([f], names))
            ranges = cal.compute_data()
        del cal
    if conv_outputs:
        options = dict(options, conv_outputs=True)
    return Calibration(method, ranges, len(feeds), options, time.perf_counter() - t0)


def _graph_output_convs(model) -> set[str]:
    """Conv nodes whose output is a graph output: the ort-cpu layout leaves them float (a quantized graph output
    would be int8 precision; ORT's quantizer cannot quantize a Conv's inputs without its output)."""
    outputs = {o.name for o in model.graph.output}
    return {n.name for n in model.graph.node if n.op_type == "Conv" and n.output[0] in outputs}


def _conv_outputs(model, names: set[str]) -> set[str]:
    """Outputs of the Conv nodes among ``names`` that are not graph outputs (ort-cpu quantizes them)."""
    outputs = {o.name for o in model.graph.output}
    return {n.output[0] for n in model.graph.node
            if n.op_type == "Conv" and n.name in names and n.output[0] not in outputs}
