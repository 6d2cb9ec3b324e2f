"""Comparable fingerprints of what a loop depends on: the values a cell reads, loop items, and the
parameter values that key a run.

**Inputs.** A resume (or a replay) is refused when a value the cell reads from outside changed since
the checkpoint was written, so that a result is never silently one of other inputs. Fingerprinted:
numbers (numpy's by value: ``np.float64(0.1)`` as ``0.1``), strings, bytes, ``None``; lists, tuples,
sets and dicts of those (nested, up to :data:`MAX_ITEMS` items in all, sets in sorted order, since
their order varies between processes); numpy arrays (by shape, dtype and a digest of their bytes).
Other objects (models, open files, modules) are not: their identity says nothing and their state is
theirs. The text is readable: it is what a refusal shows.

**Items.** The item at a checkpoint's position is recorded, and a resumed loop must yield the same item
there (:func:`item_matches`). Plain data and arrays are fingerprinted by the same text as inputs (as
every version has), torch tensors and containers of them (a DataLoader's batch) by their bytes; any
other item by its canonical digest
(:func:`~resumable_magic.state.canonical.canonical_digest`: sets ordered, recursively, inside any
container or object state, so an object holding a set of strings fingerprints the same in every
kernel), tagged ``c1:``. Fingerprints written by earlier versions (a digest of the item's pickle) are
still accepted.

**Parameters.** :func:`param_text` is a parameter's part of a run key (its value as short safe text, or
``h`` and its canonical digest), :func:`param_record` what the manifest records of it.
"""

from __future__ import annotations

import contextlib
import json
import pickle
import re
import sys
from collections.abc import Mapping
from typing import Any

import xxhash

from resumable_magic.errors import NoContentIdentityError, OptionError
from resumable_magic.state.canonical import CANONICAL_VERSION, canonical_digest

__all__ = [
    "MAX_ITEMS",
    "canonical_digest",
    "fingerprint_inputs",
    "fingerprint_item",
    "inputs_changed",
    "item_fingerprints",
    "item_matches",
    "param_record",
    "param_text",
]

MAX_ITEMS = 100_000  # elements of a container input, all levels together
_SHOWN = 200  # longest text shown as is in messages; longer values are summarised with a digest
_SIMPLE = (bool, int, float, complex, str, bytes, type(None))
_CONTAINERS = (list, tuple, set, frozenset, dict)
_SAFE_TEXT = re.compile(r"^[A-Za-z0-9._+-]{1,40}$")  # a parameter value shown as is in a run key
_JSON_LIMIT = 100_000  # longest JSON form recorded for a parameter (a manifest stays small)
_TEXT_LIMIT = 80  # longest parameter text recorded for people (status, the board)


class _TooBig(Exception):
    pass


def _python_number(value: Any) -> Any:
    """A numpy bool, integer, float (up to 64 bits) or str as the Python value it equals; else itself."""
    np = sys.modules.get("numpy")  # a numpy value means numpy is imported
    if np is None or not isinstance(value, np.generic):
        return value
    if isinstance(value, (np.bool_, np.integer, np.str_)) or (
        isinstance(value, np.floating) and value.dtype.itemsize <= 8
    ):
        return value.item()
    return value


def _canonical(value: Any, budget: list[int], by_value: bool, depth: int = 0) -> str | None:
    """Text that is equal exactly when the values are (sets sorted); None for what is not plain data.
    ``by_value``: numpy scalars as the Python numbers they equal (items keep the text they always had)."""
    if by_value:
        value = _python_number(value)
    if isinstance(value, _SIMPLE):
        return repr(value)
    if not isinstance(value, _CONTAINERS) or depth > 8:
        return None
    budget[0] -= len(value)
    if budget[0] < 0:
        raise _TooBig
    if isinstance(value, dict):
        parts = []
        for key, item in value.items():
            k = _canonical(key, budget, by_value, depth + 1)
            v = _canonical(item, budget, by_value, depth + 1)
            if k is None or v is None:
                return None
            parts.append(f"{k}: {v}")
        return "{" + ", ".join(parts) + "}"
    texts = []
    for item in value:
        text = _canonical(item, budget, by_value, depth + 1)
        if text is None:
            return None
        texts.append(text)
    if isinstance(value, (set, frozenset)):
        return f"{type(value).__name__}({{{', '.join(sorted(texts))}}})"
    if isinstance(value, tuple):
        return "(" + ", ".join(texts) + ("," if len(texts) == 1 else "") + ")"
    return "[" + ", ".join(texts) + "]"


def _array(value: Any) -> str | None:
    if type(value).__module__ != "numpy" or type(value).__name__ != "ndarray" or value.dtype.hasobject:
        return None
    data = value if value.flags.c_contiguous else value.copy(order="C")
    return f"array{tuple(value.shape)} {value.dtype}, digest {xxhash.xxh3_128_hexdigest(data.data)[:16]}"


def _tensor(value: Any) -> str | None:
    """A torch tensor by dtype, shape and a digest of its bytes (bfloat16 too: read as raw bytes)."""
    torch = sys.modules.get("torch")  # a tensor means torch is imported
    if torch is None or not isinstance(value, torch.Tensor) or value.is_sparse or value.is_quantized:
        return None
    data = value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()
    return f"tensor{tuple(value.shape)} {value.dtype}, digest {xxhash.xxh3_128_hexdigest(data.data)[:16]}"


def _batch(value: Any) -> str | None:
    """A tuple, list or dict holding torch tensors (a DataLoader's batch), by its pieces' texts."""
    torch = sys.modules.get("torch")
    pieces = value.values() if isinstance(value, dict) else value
    if torch is None or not isinstance(value, (tuple, list, dict)) or len(value) > 64:
        return None
    if not any(isinstance(piece, torch.Tensor) for piece in pieces):
        return None  # (other containers keep the fingerprints earlier versions recorded)
    if isinstance(value, dict):
        parts = [_fingerprint(v, by_value=False) for v in value.values()]
        keys = [_canonical(k, [MAX_ITEMS], False) for k in value]
        if None in parts or None in keys:
            return None
        return "{" + ", ".join(f"{k}: {v}" for k, v in zip(keys, parts, strict=True)) + "}"
    texts = [_fingerprint(v, by_value=False) for v in value]
    return None if None in texts else f"{type(value).__name__}({', '.join(texts)})"  # type: ignore[arg-type]


def _fingerprint(value: Any, by_value: bool) -> str | None:
    try:
        text = _canonical(value, [MAX_ITEMS], by_value)
    except (_TooBig, RecursionError):
        return None
    if text is None:
        # Tensors, and batches of them, as loop items only: inputs stay what they were.
        return _array(value) or (None if by_value else _tensor(value) or _batch(value))
    if len(text) <= _SHOWN:
        return text
    size = f"{len(value)} items, " if isinstance(value, _CONTAINERS) else ""
    return f"{type(value).__name__} of {size}digest {xxhash.xxh3_128_hexdigest(text.encode())[:16]}"


def fingerprint_inputs(values: Mapping[str, Any]) -> dict[str, str]:
    """Comparable text for each value among ``values`` that is plain data (see the module doc)."""
    found = {}
    for name, value in values.items():
        text = _fingerprint(value, by_value=True)
        if text is not None:
            found[name] = text
    return found


def inputs_changed(recorded: Mapping[str, str], values: Mapping[str, Any]) -> dict[str, tuple[str, str]]:
    """``{name: (then, now)}`` for each input in ``recorded`` (a checkpoint's ``inputs``) whose value
    in ``values`` has another fingerprint now. Texts written before numpy numbers were fingerprinted by
    value (``np.float64(0.1)``) still match the value they were written for."""
    now = fingerprint_inputs(values)
    changes = {}
    for name, then in recorded.items():
        text = now.get(name, "undefined")
        if text != then and not (name in values and _fingerprint(values[name], by_value=False) == then):
            changes[name] = (then, text)
    return changes


def _type_tag(item: Any) -> str:
    return f"type:{type(item).__module__}.{type(item).__qualname__}"


def fingerprint_item(item: Any) -> str:
    """A fingerprint of a loop item, to check that a resumed loop yields the same item at the
    checkpoint (see the module doc; compare with :func:`item_matches`)."""
    text = _fingerprint(item, by_value=False)
    if text is not None:  # plain data and arrays: the fingerprint every version has written
        return xxhash.xxh3_128_hexdigest(text.encode())
    try:
        return f"c{CANONICAL_VERSION}:{canonical_digest(item)}"
    except NoContentIdentityError:
        # Nothing to compare but the kind of item (a generator, a file): the weakest check, as before.
        return _type_tag(item)


def item_fingerprints(item: Any) -> list[str]:
    """Every fingerprint a checkpoint may have recorded for ``item``: today's first, then the digest
    of its pickle (what versions before canonical fingerprints recorded for an item that is not plain
    data), then its type's (recorded when it had no fingerprint)."""
    found = [fingerprint_item(item)]
    if _fingerprint(item, by_value=False) is None:
        with contextlib.suppress(Exception):  # what cannot be pickled was recorded by its type
            found.append(xxhash.xxh3_128_hexdigest(pickle.dumps(item, protocol=5)))
        found.append(_type_tag(item))
    return found


def item_matches(recorded: str | None, item: Any) -> bool:
    """Whether ``item`` is the item a checkpoint recorded (``manifest["item"]``, in any format a
    version wrote); True when it recorded none."""
    if recorded is None or recorded == fingerprint_item(item):
        return True
    return recorded in item_fingerprints(item)


def param_text(name: str, value: Any, option: str = "--params") -> str:
    """A parameter's part of a run key: bools, numbers and short safe strings as their text (numpy
    numbers as the Python numbers they equal: ``3`` for ``np.int64(3)``), anything else ``h`` and the
    first 10 hex digits of its canonical digest. Raises
    :class:`~resumable_magic.errors.OptionError` naming ``name`` (and ``option``) for a value with no
    content to key a run by (a generator, an open file, ... anywhere inside it)."""
    value = _python_number(value)
    text = (
        repr(value) if isinstance(value, (bool, int, float)) else f"{value}" if isinstance(value, str) else ""
    )
    if _SAFE_TEXT.match(text):
        return text
    try:
        return "h" + canonical_digest(value, name)[:10]
    except NoContentIdentityError as exc:
        raise OptionError(
            option,
            name,
            f"its value cannot key a run: {exc} Pass what it is made from instead (the values a "
            f"generator yields, as a list; a file's path, not the open file)",
        ) from None


def _json_default(value: Any) -> Any:
    converted = _python_number(value)
    if converted is value:
        raise TypeError(type(value).__name__)
    return converted


def param_record(value: Any) -> dict[str, Any]:
    """What a manifest records of a parameter's value: ``{"text": ...}`` (its repr on one line,
    shortened, for people) and ``"json"``, its JSON form, when it has one that gives the value back: the same run key
    when loaded and passed again (so a tuple has none: it would come back as a list; nor has NaN)."""
    python = _python_number(value)
    try:
        text = " ".join(repr(python).split())  # one line: a DataFrame's repr has many
    except Exception:
        text = f"<{type(value).__qualname__}>"
    record: dict[str, Any] = {"text": text if len(text) <= _TEXT_LIMIT else text[: _TEXT_LIMIT - 3] + "..."}
    try:
        dumped = json.dumps(value, default=_json_default, allow_nan=False)
        if len(dumped) <= _JSON_LIMIT:
            form = json.loads(dumped)
            if canonical_digest(form) == canonical_digest(value):
                record["json"] = form
    except (TypeError, ValueError, RecursionError, NoContentIdentityError):
        pass  # no JSON form: not plain data, a non-finite float, or too large
    return record
