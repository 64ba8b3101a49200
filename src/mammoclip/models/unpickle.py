"""A restricted unpickler for foreign ``torch.save`` files: tensors come out, nothing else ever runs.

Research checkpoints (the official Mammo-CLIP ``.tar`` files and most ``.pt``/``.ckpt`` files) keep their
weights next to metadata: numpy scalars and arrays, OmegaConf containers, Lightning callbacks, argparse
``Namespace`` objects, arbitrary classes of the training code. ``torch.load(weights_only=True)`` refuses
the whole file as soon as one such global appears; plain ``torch.load`` would import and call them,
which is how a pickle runs code. :func:`restricted_load` takes the third way:

* tensors, parameters and their storages are rebuilt by this module's own functions (the storages
  are read from the zip archive by ``persistent_load``, as torch does, or from the legacy stream);
* plain containers (dict, list, tuple, set, frozenset, ``OrderedDict``), ``bytes`` in every protocol,
  ``torch.Size`` / ``torch.device`` / torch dtypes and numpy dtypes, scalars and arrays are rebuilt by
  known constructors that check their arguments (object arrays hold only what this unpickler made);
* **every other global** becomes a :class:`Placeholder` class: calling it, ``NEWOBJ``, ``BUILD``,
  appends and item sets only record what the pickle said (``module.name``, args, state), nothing is
  imported and nothing is called. ``os.system``, ``builtins.eval``, ``functools.partial``,
  ``operator.attrgetter`` ... are inert records like any research class.

Any malformed stream (bad opcodes, a tensor whose storage is missing or too short) is a
:class:`~mammoclip.errors.CheckpointError` naming the file.
"""

from __future__ import annotations

import _compat_pickle
import collections
import io
import pickle
import re
import struct
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

from mammoclip.errors import CheckpointError

#: ``torch.save``'s legacy (non-zip) stream begins with this number and protocol (torch/serialization.py).
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001


# --- placeholders --------------------------------------------------------------------------------------


class Placeholder:
    """A global the unpickler did not rebuild: what the pickle named and passed, never called.

    Attributes:
        target: ``"module.name"`` of the global (``"omegaconf.dictconfig.DictConfig"``).
        args / kwargs: What the pickle passed to it (REDUCE / NEWOBJ).
        state: What ``BUILD`` would have set (``__setstate__`` / ``__dict__``).
        items / entries: What ``APPENDS`` / ``SETITEMS`` would have added.
    """

    target = "?"
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    state: Any
    items: list[Any]
    entries: dict[Any, Any]

    #: Set on the classes one unpickler hands out: counts the objects it made, by target.
    counter: collections.Counter[str] | None = None

    def __new__(cls, *args: Any, **kwargs: Any) -> Placeholder:
        if cls.counter is not None:
            cls.counter[cls.target] += 1
        obj = object.__new__(cls)
        obj.args, obj.kwargs = args, kwargs
        obj.state, obj.items, obj.entries = None, [], {}
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # REDUCE calls cls(*args): all done in __new__
        pass

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def append(self, item: Any) -> None:
        self.items.append(item)

    def extend(self, items: Any) -> None:
        self.items.extend(items)

    def __setitem__(self, key: Any, value: Any) -> None:
        try:
            self.entries[key] = value
        except TypeError:  # an unhashable key (a placeholder with __eq__ ... is hashable; lists are not)
            self.entries[repr(key)] = value

    def __call__(self, *args: Any, **kwargs: Any) -> Placeholder:
        """A pickle that calls the result of a global (``getattr(os, "system")(...)``) gets another record."""
        return placeholder_class(self.target, "()")(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<placeholder {self.target}>"


_CLASSES: dict[str, type[Placeholder]] = {}


def placeholder_class(module: str, name: str) -> type[Placeholder]:
    """The (cached) placeholder class standing for ``module.name``."""
    target = f"{module}.{name}"
    if target not in _CLASSES:
        _CLASSES[target] = type(name or "placeholder", (Placeholder,), {"target": target, "__module__": __name__})
    return _CLASSES[target]


# --- safe constructors -------------------------------------------------------------------------------


def _build_set(items: Any = ()) -> Any:
    return set(items) if isinstance(items, (list, tuple, set, frozenset)) else placeholder_class("builtins", "set")(items)


def _build_frozenset(items: Any = ()) -> Any:
    if isinstance(items, (list, tuple, set, frozenset)):
        return frozenset(items)
    return placeholder_class("builtins", "frozenset")(items)


def _build_bytearray(data: Any = b"", *rest: Any) -> Any:
    if isinstance(data, (bytes, bytearray)) and not rest:
        return bytearray(data)
    if isinstance(data, str) and rest in (("latin1",), ("latin-1",)):
        return bytearray(data.encode("latin1"))
    if isinstance(data, list) and all(isinstance(b, int) and 0 <= b < 256 for b in data):
        return bytearray(data)
    return placeholder_class("builtins", "bytearray")(data, *rest)  # bytearray(10**12) is a memory bomb


def _codecs_encode(text: Any, encoding: Any = "utf-8", *rest: Any) -> Any:
    """How protocols 0-2 spell ``bytes``: ``_codecs.encode(str, "latin1")``."""
    if isinstance(text, str) and encoding in ("latin1", "latin-1", "utf-8", "utf8") and not rest:
        return text.encode(encoding)
    return placeholder_class("_codecs", "encode")(text, encoding, *rest)


def _build_ordered_dict(items: Any = ()) -> Any:
    if isinstance(items, (dict, list, tuple)):
        return collections.OrderedDict(items)
    return placeholder_class("collections", "OrderedDict")(items)


def _build_complex(real: Any = 0.0, imag: Any = 0.0) -> Any:
    if isinstance(real, (int, float)) and isinstance(imag, (int, float)):
        return complex(real, imag)
    return placeholder_class("builtins", "complex")(real, imag)


def _torch_size(dims: Any = ()) -> Any:
    if isinstance(dims, (list, tuple)) and all(isinstance(d, int) for d in dims):
        return torch.Size(dims)
    return placeholder_class("torch", "Size")(dims)


def _torch_device(spec: Any, index: Any = None) -> Any:
    try:
        return torch.device(spec) if index is None else torch.device(spec, index)
    except (TypeError, RuntimeError, ValueError):
        return placeholder_class("torch", "device")(spec, index)


_TORCH_DTYPES = {str(d).removeprefix("torch."): d for d in (
    torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.complex64, torch.complex128,
    torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8, torch.bool)}
#: ``torch.FloatStorage`` ... as named in a storage's persistent id -> its dtype.
_STORAGE_DTYPES: dict[str, torch.dtype] = {
    "DoubleStorage": torch.float64, "FloatStorage": torch.float32, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "ComplexFloatStorage": torch.complex64,
    "ComplexDoubleStorage": torch.complex128, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool, "UntypedStorage": torch.uint8,
}


@dataclass(frozen=True)
class _StorageType:
    """What ``torch.FloatStorage`` ... unpickles to: only its dtype is ever used."""

    dtype: torch.dtype


@dataclass
class _Storage:
    """A storage read from the file (bytes of ``numel`` elements of ``dtype``)."""

    data: torch.Tensor  # (nbytes,) uint8
    dtype: torch.dtype


class _TensorMarker:
    """``torch.Tensor`` / ``torch.nn.Parameter`` as the ``new_type`` of ``_rebuild_from_type_v2``."""

    def __init__(self, parameter: bool) -> None:
        self.parameter = parameter


_TENSOR, _PARAMETER = _TensorMarker(False), _TensorMarker(True)


def _rebuild_tensor(storage: Any, offset: Any, size: Any, stride: Any, requires_grad: Any = False,
                    *_ignored: Any) -> torch.Tensor:
    """``torch._utils._rebuild_tensor_v2`` with its arguments checked (hooks and metadata are dropped)."""
    if not isinstance(storage, _Storage):
        raise pickle.UnpicklingError(f"a tensor refers to {type(storage).__name__}, not a storage")
    ints = isinstance(offset, int) and all(isinstance(v, int) and v >= 0 for v in (*size, *stride, offset))
    if not ints or len(size) != len(stride):
        raise pickle.UnpicklingError(f"a tensor has a malformed size/stride/offset {size}/{stride}/{offset}")
    item = torch.empty((), dtype=storage.dtype).element_size()
    numel = storage.data.numel() // item
    last = offset + sum((s - 1) * st for s, st in zip(size, stride)) if all(size) else offset - 1
    if last >= numel:
        raise pickle.UnpicklingError(f"a tensor of size {tuple(size)} reads past its storage of {numel} elements")
    flat = storage.data.view(storage.dtype) if storage.data.numel() else torch.empty(0, dtype=storage.dtype)
    out = torch.empty(0, dtype=storage.dtype).set_(flat.untyped_storage(), offset, tuple(size), tuple(stride))
    if requires_grad is True and (out.is_floating_point() or out.is_complex()):
        out.requires_grad_(True)
    return out


def _rebuild_tensor_v3(storage: Any, offset: Any, size: Any, stride: Any, requires_grad: Any, hooks: Any,
                       dtype: Any, *_ignored: Any) -> torch.Tensor:
    if isinstance(storage, _Storage) and isinstance(dtype, torch.dtype):
        storage = _Storage(storage.data, dtype)
    return _rebuild_tensor(storage, offset, size, stride, requires_grad)


def _rebuild_parameter(data: Any, requires_grad: Any = True, *_ignored: Any) -> Any:
    if not isinstance(data, torch.Tensor):
        raise pickle.UnpicklingError(f"a parameter wraps {type(data).__name__}, not a tensor")
    return torch.nn.Parameter(data.detach(), requires_grad=bool(requires_grad) and data.is_floating_point())


def _rebuild_from_type_v2(func: Any, new_type: Any, args: Any, state: Any = None) -> Any:
    """How tensor subclasses pickle; only plain tensors and parameters are rebuilt."""
    if func in _TENSOR_FUNCS.values() and isinstance(new_type, _TensorMarker) and isinstance(args, tuple):
        tensor = func(*args)
        return _rebuild_parameter(tensor) if new_type.parameter else tensor
    return placeholder_class("torch._tensor", "_rebuild_from_type_v2")(func, new_type, args, state)


_TENSOR_FUNCS: dict[str, Callable[..., Any]] = {
    "_rebuild_tensor_v2": _rebuild_tensor, "_rebuild_tensor": _rebuild_tensor,
    "_rebuild_tensor_v3": _rebuild_tensor_v3, "_rebuild_parameter": _rebuild_parameter,
    "_rebuild_parameter_with_state": _rebuild_parameter,
}


# numpy: dtypes through np.dtype with a plain type code; BUILD then runs numpy's own dtype/ndarray
# __setstate__ (C code that only accepts its tuple layout).
_NDARRAY = placeholder_class("numpy", "ndarray")


def _np_dtype(spec: Any, align: Any = False, copy: Any = False) -> Any:
    if isinstance(spec, str) and len(spec) <= 8 and spec.isalnum():
        try:
            return np.dtype(spec, bool(align), bool(copy))
        except TypeError:
            pass
    return placeholder_class("numpy", "dtype")(spec, align, copy)


def _np_scalar(dtype: Any, data: Any = None) -> Any:
    if isinstance(dtype, np.dtype) and dtype.hasobject:
        return data  # an object scalar holds something this unpickler already made
    if isinstance(dtype, np.dtype) and isinstance(data, bytes) and len(data) == dtype.itemsize:
        return np.frombuffer(data, dtype=dtype, count=1)[0]
    return placeholder_class("numpy.core.multiarray", "scalar")(dtype, data)


def _np_reconstruct(subtype: Any, shape: Any, dtype_code: Any) -> Any:
    """``numpy.core.multiarray._reconstruct``: an empty ndarray that numpy's BUILD then fills."""
    if subtype is _NDARRAY:
        return np.ndarray((0,), dtype=np.uint8)
    return placeholder_class("numpy.core.multiarray", "_reconstruct")(subtype, shape, dtype_code)


def _np_frombuffer(buf: Any, dtype: Any, shape: Any, order: Any = "C") -> Any:
    """``numpy.core.numeric._frombuffer``: how protocol 5 pickles an array (a copy of the bytes)."""
    ok = (isinstance(buf, (bytes, bytearray, pickle.PickleBuffer)) and isinstance(dtype, np.dtype)
          and not dtype.hasobject and order in ("C", "F") and isinstance(shape, tuple)
          and all(isinstance(d, int) and d >= 0 for d in shape))
    if ok and int(np.prod(shape, dtype=np.int64)) * dtype.itemsize == memoryview(buf).nbytes:
        return np.frombuffer(buf, dtype=dtype).reshape(shape, order=order).copy()
    return placeholder_class("numpy.core.numeric", "_frombuffer")(buf, dtype, shape, order)


_SAFE: dict[tuple[str, str], Any] = {
    ("builtins", "set"): _build_set, ("__builtin__", "set"): _build_set,
    ("builtins", "frozenset"): _build_frozenset, ("__builtin__", "frozenset"): _build_frozenset,
    ("builtins", "bytearray"): _build_bytearray, ("__builtin__", "bytearray"): _build_bytearray,
    ("builtins", "complex"): _build_complex, ("__builtin__", "complex"): _build_complex,
    ("_codecs", "encode"): _codecs_encode,
    ("collections", "OrderedDict"): _build_ordered_dict,
    ("torch", "Size"): _torch_size, ("torch", "device"): _torch_device,
    ("torch", "Tensor"): _TENSOR, ("torch._tensor", "Tensor"): _TENSOR,
    ("torch.nn.parameter", "Parameter"): _PARAMETER, ("torch.nn", "Parameter"): _PARAMETER,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
    ("numpy", "dtype"): _np_dtype, ("numpy", "ndarray"): _NDARRAY,
    **{(mod, "scalar"): _np_scalar for mod in ("numpy.core.multiarray", "numpy._core.multiarray")},
    **{(mod, "_reconstruct"): _np_reconstruct for mod in ("numpy.core.multiarray", "numpy._core.multiarray")},
    **{(mod, "_frombuffer"): _np_frombuffer for mod in ("numpy.core.numeric", "numpy._core.numeric")},
    **{("torch._utils", name): fn for name, fn in _TENSOR_FUNCS.items()},
    **{("torch", name): _StorageType(dt) for name, dt in _STORAGE_DTYPES.items()},
    **{("torch", name): dt for name, dt in _TORCH_DTYPES.items()},
}


# --- the unpickler -----------------------------------------------------------------------------------


_PID0 = re.compile(r"\('storage', <class 'torch\.(?P<cls>\w+)'>, '(?P<key>\w+)', '(?P<loc>[\w:]+)', "
                   r"(?P<numel>\d+)(, None)?\)")


class RestrictedUnpickler(pickle.Unpickler):
    """``find_class`` returns only the safe constructors above, or a placeholder class; never an import.

    Args:
        file: The pickle stream.
        storages: ``persistent_load`` callback for ``("storage", type, key, location, numel, ...)`` ids;
            None refuses persistent ids.
    """

    def __init__(self, file: IO[bytes], storages: Callable[[tuple[Any, ...]], _Storage] | None = None) -> None:
        super().__init__(file, encoding="latin1")
        self._storages = storages
        #: ``module.name`` -> how many placeholder objects of it the pickle made.
        self.placeholders: collections.Counter[str] = collections.Counter()
        self._classes: dict[str, type[Placeholder]] = {}

    def find_class(self, module: str, name: str) -> Any:
        # Protocols 0-2 name Python 2 modules (``__builtin__``, ``copy_reg``, ``commands``): translate as
        # pickle's own find_class does, so the safe table and the placeholders use Python 3 names.
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
        safe = _SAFE.get((module, name))
        if safe is not None:
            return safe
        target = f"{module}.{name}"
        if target not in self._classes:  # a class of its own, so that instances count into this load
            base = placeholder_class(module, name)
            self._classes[target] = type(base.__name__, (base,), {"counter": self.placeholders})
        return self._classes[target]

    def persistent_load(self, pid: Any) -> Any:
        if isinstance(pid, str):  # protocol 0 writes the id as its str(): parse, never evaluate
            match = _PID0.fullmatch(pid)
            if match is None or match["cls"] not in _STORAGE_DTYPES:
                raise pickle.UnpicklingError(f"unsupported persistent id {pid[:80]}")
            pid = ("storage", _StorageType(_STORAGE_DTYPES[match["cls"]]), match["key"], match["loc"],
                   int(match["numel"]))
        if self._storages is None or not isinstance(pid, tuple) or not pid or pid[0] not in ("storage", b"storage"):
            raise pickle.UnpicklingError(f"unsupported persistent id {str(pid)[:80]}")
        return self._storages(pid)


@dataclass
class RestrictedLoad:
    """What :func:`restricted_load` found.

    Attributes:
        obj: The unpickled object (tensors, containers, numpy values, placeholders).
        placeholders: ``module.name`` -> count, for every global that became a placeholder.
        format: ``"zip"`` or ``"legacy"``.
    """

    obj: Any
    placeholders: dict[str, int] = field(default_factory=dict)
    format: str = "zip"

    def note(self, limit: int = 6) -> str:
        """One line naming what was ignored, or ``""``."""
        if not self.placeholders:
            return ""
        names = sorted(self.placeholders, key=lambda k: (-self.placeholders[k], k))
        shown = ", ".join(f"{n} x{self.placeholders[n]}" if self.placeholders[n] > 1 else n for n in names[:limit])
        more = f" and {len(names) - limit} more" if len(names) > limit else ""
        return (f"ignored {sum(self.placeholders.values())} non-tensor object(s) in the file's metadata, kept "
                f"as inert placeholders (not imported, not run): {shown}{more}")


def _element_size(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def _storage_dtype(pid: tuple[Any, ...]) -> tuple[torch.dtype, str, int]:
    if len(pid) < 5 or not isinstance(pid[1], _StorageType) or not isinstance(pid[4], int) or pid[4] < 0:
        raise pickle.UnpicklingError(f"malformed storage id {str(pid)[:120]}")
    key = pid[2].decode("ascii") if isinstance(pid[2], bytes) else str(pid[2])
    return pid[1].dtype, key, pid[4]


def _load_zip(path: Path, archive: zipfile.ZipFile) -> RestrictedLoad:
    pkls = [n for n in archive.namelist() if n.endswith("data.pkl") and n.count("/") == 1]
    if len(pkls) != 1:
        raise CheckpointError(f"{path} is a zip archive but not a torch.save file (no single */data.pkl)")
    prefix = pkls[0][: -len("data.pkl")]
    byteorder = f"{prefix}byteorder"
    if byteorder in archive.namelist() and archive.read(byteorder).strip() not in (b"little", b""):
        raise CheckpointError(f"{path} was saved on a big-endian machine, which the converter does not read")
    cache: dict[str, _Storage] = {}

    def storage(pid: tuple[Any, ...]) -> _Storage:
        dtype, key, numel = _storage_dtype(pid)
        if key not in cache:
            name = f"{prefix}data/{key}"
            try:
                info = archive.getinfo(name)
            except KeyError:
                raise pickle.UnpicklingError(f"storage {name} is missing from the archive") from None
            if info.file_size < numel * _element_size(dtype):
                raise pickle.UnpicklingError(f"storage {name} holds {info.file_size} bytes, "
                                             f"{numel * _element_size(dtype)} expected")
            raw = bytearray(archive.read(name))
            cache[key] = _Storage(torch.frombuffer(raw, dtype=torch.uint8) if raw else torch.empty(0, dtype=torch.uint8),
                                  dtype)
        return _Storage(cache[key].data, dtype)

    unpickler = RestrictedUnpickler(io.BytesIO(archive.read(pkls[0])), storages=storage)
    obj = unpickler.load()
    return RestrictedLoad(obj, dict(unpickler.placeholders), "zip")


def _load_legacy(path: Path, fh: IO[bytes]) -> RestrictedLoad:
    """The pre-1.6 stream: magic, protocol, sys info, the object, its storage keys, then raw storages."""
    placeholders: collections.Counter[str] = collections.Counter()

    def plain() -> Any:
        u = RestrictedUnpickler(fh)
        value = u.load()
        placeholders.update(u.placeholders)
        return value

    if plain() != LEGACY_MAGIC:
        raise CheckpointError(f"{path} is neither a torch.save zip archive nor a legacy torch.save stream")
    if plain() != LEGACY_PROTOCOL:
        raise CheckpointError(f"{path}: unknown legacy torch.save protocol")
    sys_info = plain()
    if isinstance(sys_info, dict) and sys_info.get("little_endian") is False:
        raise CheckpointError(f"{path} was saved on a big-endian machine, which the converter does not read")
    roots: dict[str, _Storage] = {}
    size = path.stat().st_size

    def storage(pid: tuple[Any, ...]) -> _Storage:
        dtype, key, numel = _storage_dtype(pid)
        nbytes = numel * _element_size(dtype)
        if nbytes > size:  # cannot be in the file: refuse before allocating
            raise pickle.UnpicklingError(f"storage {key} declares {nbytes} bytes, more than the file holds")
        if key not in roots:
            roots[key] = _Storage(torch.zeros(nbytes, dtype=torch.uint8), dtype)
        root = roots[key]
        view = pid[5] if len(pid) > 5 else None
        if view is not None:
            _view_key, offset, view_size = view
            item = _element_size(dtype)
            return _Storage(root.data[offset * item:(offset + view_size) * item], dtype)
        return _Storage(root.data, dtype)

    u = RestrictedUnpickler(fh, storages=storage)
    obj = u.load()
    placeholders.update(u.placeholders)
    keys = plain()
    if not isinstance(keys, list):
        raise CheckpointError(f"{path}: legacy storage key list is malformed")
    for key in keys:
        root = roots.get(str(key))
        if root is None:
            raise CheckpointError(f"{path}: legacy storage {key!r} is not referenced by any tensor")
        header = fh.read(8)
        if len(header) != 8:
            raise CheckpointError(f"{path} is truncated (storage {key!r} missing)")
        (count,) = struct.unpack("<q", header)
        data = fh.read(root.data.numel())
        if count * _element_size(root.dtype) != root.data.numel() or len(data) != root.data.numel():
            raise CheckpointError(f"{path} is truncated or inconsistent at storage {key!r}")
        if data:
            root.data.copy_(torch.frombuffer(bytearray(data), dtype=torch.uint8))
    return RestrictedLoad(obj, dict(placeholders), "legacy")


def restricted_load(path: str | Path) -> RestrictedLoad:
    """Load a ``torch.save`` file (zip or legacy) without importing or calling anything it names.

    Args:
        path: A ``.tar`` / ``.pt`` / ``.pth`` / ``.ckpt`` written by ``torch.save``.

    Returns:
        The object (tensors are CPU tensors, parameters ``nn.Parameter``) and what became placeholders.

    Raises:
        CheckpointError: Missing, unreadable or malformed file, in one line that names it.
    """
    p = Path(path)
    try:
        with open(p, "rb") as fh:
            if zipfile.is_zipfile(fh):
                fh.seek(0)
                with zipfile.ZipFile(fh) as archive:
                    return _load_zip(p, archive)
            fh.seek(0)
            return _load_legacy(p, fh)
    except FileNotFoundError as err:
        raise CheckpointError(f"checkpoint {p} does not exist") from err
    except CheckpointError:
        raise
    except (pickle.UnpicklingError, EOFError, zipfile.BadZipFile, ValueError, TypeError, RuntimeError,
            AttributeError, IndexError, KeyError, struct.error, OSError, MemoryError,
            RecursionError) as err:
        first = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"cannot read {p} as a torch.save file: {type(err).__name__}: {first}") from err
