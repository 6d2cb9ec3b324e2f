"""PyTorch tensors out of band: one buffer per underlying storage, written from the storage's memory.

torch's own reduction of a tensor (``Tensor.__reduce_ex__``, ``Parameter.__reduce_ex__``) is kept: it
records the dtype, offset, size, stride, ``requires_grad``, the ``Parameter`` class and a tensor's
Python attributes, and rebuilds them with torch's ``_rebuild_*`` functions. Only the *storage* it
hands to the pickler is reduced here, to a protocol-5 buffer of its raw bytes (every dtype, bfloat16
included: no numpy twin is needed) and the device it lives on. torch keeps one Python object per
storage, so the pickler's memo writes a storage once however many tensors view it: views and tied
weights share one restored storage, as they did. An unchanged storage gives the same bytes, hence the
same blob digest, and the store does not write it again.

No copy on the way out: the buffer is a view of the storage's own memory (through ``ctypes``, so that
reading it later, in a forked writer, calls no torch function). A CUDA storage is first copied to
pinned host memory; the copies are issued without waiting and waited for once, at the end of the
pickling (:func:`end_pass`). On the way back the blob's buffer (writable, read straight from the file)
becomes the storage (``torch.frombuffer``: no copy), moved to its device; a device that is absent is
refused unless the reader maps it (``map_location="cpu"``).

torch is never imported here: these reducers are registered only for classes of a torch already in
``sys.modules``.
"""

from __future__ import annotations

import contextlib
import ctypes
import pickle
import sys
import threading
from collections.abc import Iterable, Iterator
from contextvars import ContextVar
from typing import Any

from resumable_magic.errors import DeviceMissingError

__all__ = [
    "begin_pass",
    "check_devices",
    "end_pass",
    "mapped_to",
    "reducer_for",
]

_map_location: ContextVar[str | None] = ContextVar("resumable_map_location", default=None)


class _Pass(threading.local):
    """What one pickling found: the devices its storages live on, and CUDA copies not yet waited for."""

    def __init__(self) -> None:
        self.devices: set[str] = set()
        self.copying: set[Any] = set()  # devices with host copies in flight


_pass = _Pass()


def reducer_for(cls: type) -> Any:
    """The reducer of ``cls`` if it is a storage class of the loaded torch, else None."""
    torch = sys.modules.get("torch")
    if torch is None or not cls.__module__.startswith("torch"):
        return None
    if issubclass(cls, torch.UntypedStorage):
        return _reduce_untyped
    if issubclass(cls, torch.storage.TypedStorage):
        return _reduce_typed
    return None


def begin_pass() -> None:
    """Start recording a pickling's devices (call before pickling a state)."""
    _pass.devices = set()
    _pass.copying = set()


def end_pass() -> tuple[str, ...]:
    """Wait for the host copies of CUDA storages; return the devices other than the CPU that the
    pickled storages live on (recorded in the manifest, checked before a restore)."""
    torch = sys.modules.get("torch")
    for device in _pass.copying:
        torch.cuda.synchronize(device)  # type: ignore[union-attr]
    _pass.copying = set()
    return tuple(sorted(_pass.devices - {"cpu"}))


# -- writing ------------------------------------------------------------------------------------------


def _reduce_untyped(storage: Any) -> Any:
    if storage.device.type not in ("cpu", "cuda"):
        return NotImplemented  # xla, mps, meta, ...: torch's own reduction (in band)
    device = _device_of(storage)
    _pass.devices.add(device)
    return _storage_from, (pickle.PickleBuffer(_host_bytes(storage)), device)


def _device_of(storage: Any) -> str:
    return str(storage.device)


def _reduce_typed(storage: Any) -> Any:
    # A TypedStorage would pickle itself through torch.save (in band, a copy); its untyped storage is
    # the one object that views of any dtype share.
    return _typed_storage, (storage._untyped_storage, str(storage.dtype).removeprefix("torch."))


def _host_bytes(storage: Any) -> Any:
    """A writable buffer over ``storage``'s memory (of a pinned host copy for a CUDA storage) that
    holds what keeps that memory alive: a ctypes array, not a memoryview (a memoryview with a buffer
    exported from it, left in the pickler's reference cycle, cannot be cleared by the collector)."""
    size = storage.nbytes()
    if storage.device.type == "cuda":
        torch = sys.modules["torch"]
        host = torch.empty(size, dtype=torch.uint8, pin_memory=True)
        whole = torch.empty(0, dtype=torch.uint8, device=storage.device).set_(storage)
        host.copy_(whole, non_blocking=True)  # waited for in end_pass, so that the copies overlap
        _pass.copying.add(storage.device)
        storage = host.untyped_storage()
    if size == 0:
        return bytearray()
    memory = (ctypes.c_ubyte * size).from_address(storage.data_ptr())
    memory.keep = storage  # the buffers given to the store hold the array, the array the storage
    return memory


# -- reading (referenced by name from the stream: keep these names) --------------------------------------


def _storage_from(data: Any, device: str) -> Any:
    torch = _torch()
    if memoryview(data).readonly:  # in band (a small storage): its bytes, copied once
        data = bytearray(data)
    if memoryview(data).nbytes == 0:
        storage = torch.UntypedStorage(0)
    else:  # a storage over the buffer read from the blob: no copy
        storage = torch.frombuffer(data, dtype=torch.uint8).untyped_storage()
    target = _map_location.get() or device
    if target != "cpu":
        check_devices([device])
        storage = storage.to(device=target)
    return storage


def _typed_storage(untyped: Any, dtype: str) -> Any:
    torch = _torch()
    return torch.storage.TypedStorage(wrap_storage=untyped, dtype=getattr(torch, dtype), _internal=True)


def _torch() -> Any:
    import torch  # the checkpoint holds tensors: torch is needed to read them

    return torch


# -- devices ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def mapped_to(map_location: str | None) -> Iterator[None]:
    """Restore every tensor to ``map_location`` (``"cpu"``) instead of its recorded device, inside."""
    token = _map_location.set(map_location)
    try:
        yield
    finally:
        _map_location.reset(token)


def check_devices(devices: Iterable[str], map_location: str | None = None) -> None:
    """Raise DeviceMissingError for the first of ``devices`` (recorded by a checkpoint) that this
    process does not have, unless ``map_location`` (or :func:`mapped_to`) sends tensors elsewhere."""
    if (map_location or _map_location.get()) is not None:
        return
    for device in devices:
        if device != "cpu" and not _present(device):
            raise DeviceMissingError(device)


def _present(device: str) -> bool:
    kind, _, index = device.partition(":")
    if kind != "cuda":
        return False
    torch = _torch()
    return bool(torch.cuda.is_available()) and int(index or 0) < torch.cuda.device_count()
