"""The lazy imports of this backend: TensorRT's Python package and cuda-python's runtime bindings.

Nothing is imported at module import; each function imports on call and turns a missing package into
one :class:`~ldm_runtime.errors.BackendUnavailable` line naming the install that fixes it. Callers that
want mypy to see TensorRT's types call :func:`require_tensorrt` and then ``import tensorrt as trt``
in their own body.
"""

from __future__ import annotations

from typing import Any

from ..errors import BackendUnavailable

TENSORRT_HINT = ('"ldm-runtime[tensorrt]" tensorrt  (on Jetson TensorRT comes from JetPack instead: '
                 'apt install python3-libnvinfer, and make the venv with --system-site-packages)')
CUDA_HINT = '"ldm-runtime[tensorrt]"  (cuda-python, the same CUDA major version as the driver)'


def tensorrt_installed() -> bool:
    """Whether a real TensorRT is importable, without importing it. A ``tensorrt`` folder with no
    module in it (what the ``tensorrt-stubs`` type stubs install) is an empty namespace package:
    it imports, and it is not TensorRT."""
    from importlib import util

    spec = util.find_spec("tensorrt")
    return spec is not None and spec.origin is not None


def require_tensorrt() -> str:
    """The installed TensorRT's version string; :class:`BackendUnavailable` when it is not installed."""
    what = "the TensorRT backend (Python package 'tensorrt')"
    if not tensorrt_installed():
        raise BackendUnavailable(what, TENSORRT_HINT)
    try:
        import tensorrt
    except ImportError as e:
        raise BackendUnavailable(what, TENSORRT_HINT) from e
    return str(tensorrt.__version__)


def cudart() -> Any:
    """cuda-python's CUDA runtime module (``cuda.bindings.runtime``; ``cuda.cudart`` before 12.6.1)."""
    try:
        from cuda.bindings import runtime
    except ImportError:
        try:
            from cuda import cudart as runtime  # cuda-python < 12.6.1
        except ImportError as e:
            raise BackendUnavailable("cuda-python (module 'cuda.bindings.runtime')", CUDA_HINT) from e
    return runtime
