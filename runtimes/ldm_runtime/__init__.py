"""ldm_runtime: the torch-free deploy side of ldm-export.

Imports numpy, a tokenizer library, Pillow and exactly one backend; never torch,
diffusers or transformers (tests/runtime/test_torch_free.py enforces it).
"""

__version__ = "0.1.0"
