"""Capture and restore the global random number generators, so a resumed run draws what an
uninterrupted one would have drawn: a small registry of RNG providers.

Built in: :mod:`random` always; ``numpy.random``'s legacy global generator, torch's CPU generator, and
each CUDA device's generator, each only when its module is already imported (torch's CUDA ones only
once CUDA is initialised): nothing here imports numpy or torch. Generators the user creates
(``numpy.random.default_rng()``, ``torch.Generator()``, ``random.Random()``) are ordinary objects:
name them as state and they are checkpointed with the rest.

Other libraries join with :func:`register_rng`. A provider may also name *settings* that decide
whether results are reproducible (torch's deterministic-algorithm flags): they are compared like the
cell's inputs, never restored, and a *version* recorded with each checkpoint (a different one on
resume is warned about, since streams and kernels may change between versions).
"""

from __future__ import annotations

import importlib
import random
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from resumable_magic.errors import ResumableError

__all__ = ["RngProvider", "capture", "register_rng", "restore", "settings", "versions"]


@dataclass(frozen=True)
class RngProvider:
    """One global random generator (or a family of them) that a checkpoint saves and restores."""

    name: str
    capture: Callable[[], Any]  # the state, as a picklable value
    restore: Callable[[Any], None]  # put a captured state back
    is_loaded: Callable[[], bool]  # whether to capture now (never import anything to find out)
    settings: Callable[[], dict[str, Any]] | None = None  # compared like inputs, not restored
    version: Callable[[], str] | None = None  # recorded; a different one on resume is warned about
    module: str | None = None  # imported by restore() when a checkpoint holds a state of it


_PROVIDERS: dict[str, RngProvider] = {}


def register_rng(
    name: str,
    capture: Callable[[], Any],
    restore: Callable[[Any], None],
    is_loaded: Callable[[], bool],
    *,
    settings: Callable[[], dict[str, Any]] | None = None,
    version: Callable[[], str] | None = None,
    module: str | None = None,
) -> None:
    """Add (or replace) a global RNG that every checkpoint saves and every resume restores.

    ``capture()`` returns the generator's state (picklable); ``restore(state)`` puts it back;
    ``is_loaded()`` says whether the library is in use (check ``sys.modules``; do not import it).
    ``settings()``, if given, returns values that decide reproducibility (compared on resume like
    the cell's inputs: a change refuses before running); ``version()`` the library's version;
    ``module`` is imported before ``restore`` when a checkpoint holds a state and it is not loaded.
    """
    _PROVIDERS[name] = RngProvider(name, capture, restore, is_loaded, settings, version, module)


def capture() -> dict[str, Any]:
    """The current global RNG states, by provider name."""
    return {name: p.capture() for name, p in _PROVIDERS.items() if p.is_loaded()}


def restore(states: Mapping[str, Any]) -> None:
    """Put back what :func:`capture` returned (importing a provider's module if the checkpoint used
    it: the resumed code will). States of providers not registered here are left alone."""
    for name, state in states.items():
        provider = _PROVIDERS.get(name)
        if provider is None:
            continue
        if provider.module is not None and provider.module not in sys.modules:
            importlib.import_module(provider.module)
        provider.restore(state)


def settings() -> dict[str, Any]:
    """Reproducibility settings of the loaded providers, as ``{"torch: deterministic ...": value}``."""
    found: dict[str, Any] = {}
    for name, p in _PROVIDERS.items():
        if p.settings is not None and p.is_loaded():
            found.update((f"{name}: {setting}", value) for setting, value in p.settings().items())
    return found


def versions() -> dict[str, str]:
    """Versions of the loaded providers' libraries (``random`` has none: Python's is recorded)."""
    return {name: p.version() for name, p in _PROVIDERS.items() if p.version is not None and p.is_loaded()}


# -- the built-in providers ----------------------------------------------------------------------------


def _loaded(module: str) -> Callable[[], bool]:
    return lambda: module in sys.modules


def _numpy() -> Any:
    return sys.modules["numpy"]


def _torch() -> Any:
    return sys.modules["torch"]


def _torch_capture() -> bytes:
    return bytes(_torch().get_rng_state().numpy())  # bytes: independent of how tensors are stored


def _torch_restore(state: bytes) -> None:
    torch = _torch()
    torch.set_rng_state(torch.frombuffer(bytearray(state), dtype=torch.uint8))


def _torch_settings() -> dict[str, Any]:
    torch = _torch()
    cudnn = torch.backends.cudnn
    return {
        "deterministic algorithms": torch.are_deterministic_algorithms_enabled(),
        "cudnn.deterministic": bool(cudnn.deterministic),
        "cudnn.benchmark": bool(cudnn.benchmark),
    }


def _cuda_loaded() -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and bool(torch.cuda.is_initialized())


def _cuda_capture() -> list[bytes]:
    return [bytes(state.numpy()) for state in _torch().cuda.get_rng_state_all()]


def _cuda_restore(states: list[bytes]) -> None:
    torch = _torch()
    available = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if available < len(states):
        raise ResumableError(
            f"The checkpoint holds the random state of {len(states)} CUDA devices and this machine has "
            f"{available}: the run cannot continue as it would have. Run it where those devices are, or "
            f"start over with --fresh."
        )
    torch.cuda.set_rng_state_all([torch.frombuffer(bytearray(s), dtype=torch.uint8) for s in states])


register_rng("random", random.getstate, random.setstate, lambda: True)
register_rng(
    "numpy",
    lambda: _numpy().random.get_state(legacy=False),
    lambda state: _numpy().random.set_state(state),
    _loaded("numpy"),
    version=lambda: str(_numpy().__version__),
    module="numpy",
)
register_rng(
    "torch",
    _torch_capture,
    _torch_restore,
    _loaded("torch"),
    settings=_torch_settings,
    version=lambda: str(_torch().__version__),
    module="torch",
)
register_rng("torch.cuda", _cuda_capture, _cuda_restore, _cuda_loaded, module="torch")
