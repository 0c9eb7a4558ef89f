"""Quantization recipes on ONNX graphs: fp16 with an overflow/error scan, int8 (static QDQ for TensorRT's
explicit quantization, dynamic, weight-only), and sensitivity-driven mixed precision to a PSNR target.

Every recipe reads an fp32 ONNX file and writes a new one, and returns a JSON-serialisable dict saying
what was done. See docs/quantization.md.
"""

from .common import output_metrics, output_psnr, run_onnx
from .fp16 import fp16
from .calibrate import Calibration, calibrate
from .int8 import int8
from .mixed import mixed

__all__ = ["Calibration", "calibrate", "fp16", "int8", "mixed", "output_metrics", "output_psnr", "run_onnx"]
