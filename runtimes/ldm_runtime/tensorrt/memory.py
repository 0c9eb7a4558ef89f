"""Device memory: I/O buffers, and the one activation block a low-memory pipeline shares.

In low-memory mode one engine is resident at a time (text encoder, then UNet, then decoder), so
their execution contexts can share a single activation block, allocated by the application
(TensorRT's USER_MANAGED allocation strategy) and sized to the largest engine that will use it.
The block grows if a larger engine comes; it is never in use by two contexts at once.
"""

from __future__ import annotations

from . import cuda


class DeviceBuffer:
    """One ``cudaMalloc`` allocation, freed by :meth:`free` (idempotent)."""

    def __init__(self, nbytes: int):
        self.nbytes = int(nbytes)
        self.ptr = cuda.malloc(self.nbytes)

    def free(self) -> None:
        cuda.free(self.ptr)
        self.ptr = 0


class DeviceArena:
    """A growable activation block with one holder at a time."""

    def __init__(self) -> None:
        self._block: DeviceBuffer | None = None
        self.holder: object | None = None

    @property
    def nbytes(self) -> int:
        return self._block.nbytes if self._block else 0

    def acquire(self, nbytes: int, holder: object) -> int:
        """The block's address, at least ``nbytes`` large, for ``holder`` until :meth:`release`."""
        if self.holder is not None and self.holder is not holder:
            raise RuntimeError(f"the shared activation block is still held by {self.holder!r}; "
                               "a low-memory pipeline releases one component before loading the next")
        if self._block is None or self._block.nbytes < nbytes:
            if self._block is not None:
                self._block.free()
            self._block = DeviceBuffer(nbytes)
        self.holder = holder
        return self._block.ptr

    def release(self, holder: object) -> None:
        if self.holder is holder:
            self.holder = None

    def free(self) -> None:
        if self.holder is not None:
            raise RuntimeError(f"the shared activation block is still held by {self.holder!r}")
        if self._block is not None:
            self._block.free()
            self._block = None


_shared: DeviceArena | None = None


def shared_arena() -> DeviceArena:
    """The process's activation block for low-memory runners (created on first use, not at import)."""
    global _shared
    if _shared is None:
        _shared = DeviceArena()
    return _shared
