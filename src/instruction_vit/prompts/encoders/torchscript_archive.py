"""TorchScript archives (``torch.jit.save``, the format of OpenAI's released CLIP ``.pt`` files) read as data.

``torch.jit.load`` compiles the TorchScript code an archive carries and runs it (a module's ``__setstate__`` runs
while the archive loads), so loading a downloaded archive with it runs whatever its author wrote. Here nothing in
the file runs: :func:`read_archive_state_dict` returns the tensors of the module tree as a flat state dict
(``visual.conv1.weight``, ...), read from

* ``ROOT/data.pkl``, the pickled module tree: each module an object of a ``__torch__.*`` class whose state is the
  dict of its attributes (torch's ``pickler.cpp``), each tensor a call of ``torch._utils._rebuild_tensor_v2`` on a
  storage named by a persistent id ``('storage', torch.<Type>Storage, KEY, LOCATION, NUMEL)``. It is read by
  :class:`_ArchiveUnpickler`, which knows a fixed set of opcodes and a fixed set of globals, each implemented here
  (module records, tensors from storages, ``OrderedDict``, torch.jit's list and type tags): any other global, or an
  object whose state is not a dict of attributes (it would restore itself with its own code), is refused;
* ``ROOT/data/KEY``, the raw little-endian bytes of each storage, whose size in the zip must be ``NUMEL`` times the
  item size, checked before anything is allocated (and no storage reaches past the end of the file).

``ROOT/code/`` and ``ROOT/constants.pkl`` (the TorchScript code and its constants) are never opened. The tensors
are every tensor attribute of every module: ``torch.jit``'s ``state_dict()`` keeps the parameters and buffers
only, which in a traced archive (OpenAI's) are all of them; a scripted module's plain tensor attributes are kept too
(the model they are loaded into then refuses them as unexpected keys). Errors are one-line
:class:`~instruction_vit.errors.WeightsError` messages that name the file and never quote its content.
"""

from __future__ import annotations

import pickle
import re
import sys
import zipfile
from collections import OrderedDict
from collections.abc import Callable
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ...errors import WeightsError

DATA_PKL_LIMIT = 64 << 20  # bytes; a module tree's pickle is small (OpenAI's ViT-L/14: a few hundred KiB)
_CHUNK = 16 << 20  # bytes read at a time into a storage
_KEY = re.compile(r"\w{1,64}")

#: ``torch.<name>`` storage classes in persistent ids (``pickler.cpp`` writes ``<ScalarType>Storage``).
STORAGE_DTYPES = {
    "DoubleStorage": torch.float64, "FloatStorage": torch.float32, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8, "BoolStorage": torch.bool,
    "ComplexFloatStorage": torch.complex64, "ComplexDoubleStorage": torch.complex128,
}

#: The opcodes a TorchScript ``data.pkl`` is written with (binary protocols 2 to 5), kept from pickle's own
#: implementation; the ones that build or change objects are :class:`_ArchiveUnpickler`'s own, all others refused.
_PLAIN_OPCODES = (
    "PROTO", "FRAME", "STOP", "MARK", "POP", "POP_MARK", "DUP", "NONE", "NEWTRUE", "NEWFALSE", "BININT", "BININT1",
    "BININT2", "LONG1", "LONG4", "BINFLOAT", "BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8", "BINBYTES",
    "SHORT_BINBYTES", "EMPTY_TUPLE", "TUPLE", "TUPLE1", "TUPLE2", "TUPLE3", "EMPTY_LIST", "LIST", "EMPTY_DICT", "DICT",
    "BINGET", "LONG_BINGET", "BINPUT", "LONG_BINPUT", "MEMOIZE", "GLOBAL", "STACK_GLOBAL", "BINPERSID",
)


class _Refused(Exception):
    """Why an archive is not read, in this module's own words (never the file's)."""


class _Record:
    """An object of a TorchScript class (a module): its attributes, set by the pickle's ``BUILD``."""

    __slots__ = ("attributes",)


class _StorageType:
    """``torch.<Type>Storage`` as named in a persistent id: only its dtype is used."""

    __slots__ = ("dtype",)

    def __init__(self, dtype: torch.dtype):
        self.dtype = dtype


class _Storage:
    """A storage read from ``data/KEY``: a 1-D tensor of its dtype holding exactly its bytes."""

    __slots__ = ("data",)

    def __init__(self, data: Tensor):
        self.data = data


def read_archive_state_dict(path: str | Path) -> dict[str, Tensor]:
    """The tensors of the TorchScript archive ``path`` as a flat state dict (keys joined with ``.`` from the root
    module), read without running anything in it; a :class:`WeightsError` (one line) if it cannot be read as data."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with zipfile.ZipFile(path) as archive:
            state = _module_tensors(_ArchiveUnpickler(archive, _archive_root(archive), size).load())
        _check_total(state, size)
        return state
    except _Refused as err:
        raise WeightsError(f"{path}: not read as a TorchScript archive of weights: {err}; nothing in it was run") \
            from None
    except Exception as err:  # noqa: BLE001 - whatever else a hostile zip or pickle makes the parser raise
        # (struct, zlib, unicode, index, type errors...); its text may quote the file, so only its type is named.
        raise WeightsError(f"{path}: not read as a TorchScript archive of weights: its data.pkl or zip layout is not "
                           f"one torch.jit.save writes ({_kind(err)}); nothing in it was run") from err


def _kind(err: BaseException) -> str:
    """The exception's class, with its module unless builtin (``struct.error``, ``EOFError``)."""
    cls = type(err)
    return cls.__name__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__name__}"


def _archive_root(archive: zipfile.ZipFile) -> str:
    """The archive's single top folder (``torch.jit.save`` puts every record under one), checked for ``data.pkl``,
    a little-endian byte order and a ``data.pkl`` of a plausible size."""
    roots = {name.partition("/")[0] for name in archive.namelist()}
    if len(roots) != 1:
        raise _Refused("its records are not under one top folder")
    root = roots.pop()
    try:
        info = archive.getinfo(f"{root}/data.pkl")
    except KeyError:
        raise _Refused("it has no data.pkl (an archive from torch older than 1.4, or not TorchScript)") from None
    if info.file_size > DATA_PKL_LIMIT:
        raise _Refused(f"its data.pkl is {info.file_size} bytes, more than a module tree needs ({DATA_PKL_LIMIT})")
    if f"{root}/byteorder" in archive.namelist():
        with archive.open(f"{root}/byteorder") as record:
            if record.read(16) != b"little":
                raise _Refused("its tensors are not stored little-endian")
    if sys.byteorder != "little":
        raise _Refused("this machine is not little-endian, as the stored tensors are")
    return root


class _ArchiveUnpickler(pickle._Unpickler):  # noqa: SLF001 - the pure-Python unpickler: its opcode table is ours
    """Reads a TorchScript ``data.pkl`` as data: module records, tensors over storages read from the zip, plain
    Python values. Only :data:`_PLAIN_OPCODES` and the object-building opcodes below run; :meth:`find_class` maps
    the few globals a weights archive names to this module's own implementations and refuses every other one.
    CPython's pure-Python unpickler is the base because its opcode table can be replaced (the C one runs every
    opcode: ``BUILD`` would call a tensor's ``__setstate__``, ``SETITEMS`` any object's ``__setitem__``)."""

    def __init__(self, archive: zipfile.ZipFile, root: str, archive_size: int):
        info = archive.getinfo(f"{root}/data.pkl")
        super().__init__(BytesIO(archive.read(info)), fix_imports=False)
        self.archive, self.root, self.archive_size = archive, root, archive_size
        self.storages: dict[str, _Storage] = {}
        self.allocated = 0  # bytes of storages read so far: never more than the file holds

    # -- globals ------------------------------------------------------------------------------------------------
    def find_class(self, module: str, name: str) -> Any:
        if module == "__torch__" or module.startswith("__torch__."):
            return _Record
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(STORAGE_DTYPES[name])
        function = _FUNCTIONS.get((module, name))
        if function is None:
            raise _Refused("its data.pkl names a Python global that is not part of a weights archive")
        return function

    def persistent_load(self, pid: Any) -> _Storage:
        """``('storage', torch.<Type>Storage, KEY, LOCATION, NUMEL)``: ``data/KEY`` read once, on the CPU."""
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[1], _StorageType)
                and isinstance(pid[2], str) and _KEY.fullmatch(pid[2]) and isinstance(pid[3], str)
                and _is_count(pid[4])):
            raise _Refused("its data.pkl refers to data in a form torch.jit.save does not write")
        _, storage_type, key, _, numel = pid
        known = self.storages.get(key)
        if known is not None:
            if known.data.dtype != storage_type.dtype or known.data.numel() != numel:
                raise _Refused("its data.pkl gives one storage two different types or sizes")
            return known
        self.storages[key] = storage = _Storage(self._read_storage(key, storage_type.dtype, numel))
        return storage

    def _read_storage(self, key: str, dtype: torch.dtype, numel: int) -> Tensor:
        """The bytes of ``data/KEY`` as ``numel`` values of ``dtype``; the zip entry's size is checked against them
        (and against the file) before the memory is allocated."""
        try:
            info = self.archive.getinfo(f"{self.root}/data/{key}")
        except KeyError:
            raise _Refused("its data.pkl refers to a storage the archive does not hold") from None
        nbytes = numel * dtype.itemsize
        if info.file_size != nbytes:
            raise _Refused(f"a storage's size does not match: its zip entry holds {info.file_size} bytes, data.pkl "
                           f"declares {numel} values of {dtype} ({nbytes} bytes)")
        if info.compress_type != zipfile.ZIP_STORED:
            raise _Refused("a storage is compressed (torch.jit.save stores them as they are)")
        if info.header_offset + info.compress_size > self.archive_size or \
                self.allocated + nbytes > self.archive_size:
            raise _Refused("its storages add up to more bytes than the file holds")
        self.allocated += nbytes
        data = torch.empty(nbytes, dtype=torch.uint8)
        view = data.numpy()
        with self.archive.open(info) as entry:
            for start in range(0, nbytes, _CHUNK):
                chunk = entry.read(min(_CHUNK, nbytes - start))
                if len(chunk) != min(_CHUNK, nbytes - start):
                    raise _Refused("a storage is cut short")
                view[start:start + len(chunk)] = np.frombuffer(chunk, dtype=np.uint8)
        if dtype == torch.bool and nbytes and int(data.max()) > 1:
            raise _Refused("a bool storage holds values other than 0 and 1")
        return data.view(dtype)

    # -- opcodes that build objects ---------------------------------------------------------------------------------
    def load_reduce(self) -> None:
        args = self.stack.pop()
        function = self.stack[-1]
        if not (isinstance(args, tuple) and any(function is f for f in _FUNCTIONS.values())):
            raise _Refused("its data.pkl calls something other than the tensor and container builders")
        self.stack[-1] = function(*args)

    def load_newobj(self) -> None:
        args = self.stack.pop()
        cls = self.stack.pop()
        if cls is not _Record or args != ():
            raise _Refused("its data.pkl creates an object that is not a TorchScript module")
        self.append(_Record.__new__(_Record))

    def load_build(self) -> None:
        state = self.stack.pop()
        record = self.stack[-1]
        if not isinstance(record, _Record) or hasattr(record, "attributes"):
            raise _Refused("its data.pkl sets the state of something other than a TorchScript module")
        if not (isinstance(state, dict) and all(isinstance(name, str) for name in state)):
            raise _Refused("an object in it restores itself with its own code (a TorchScript __setstate__), "
                           "which is never run here")
        record.attributes = state

    def load_append(self) -> None:
        value = self.stack.pop()
        self._list().append(value)

    def load_appends(self) -> None:
        items = self.pop_mark()
        self._list().extend(items)

    def load_setitem(self) -> None:
        value, key = self.stack.pop(), self.stack.pop()
        self._dict()[key] = value

    def load_setitems(self) -> None:
        items = self.pop_mark()
        target = self._dict()
        if len(items) % 2:
            raise _Refused("its data.pkl sets a dict item without a value")
        for i in range(0, len(items), 2):
            target[items[i]] = items[i + 1]

    def _list(self) -> list:
        if type(self.stack[-1]) is not list:
            raise _Refused("its data.pkl appends to something that is not a list")
        return self.stack[-1]

    def _dict(self) -> dict:
        if type(self.stack[-1]) not in (dict, OrderedDict):
            raise _Refused("its data.pkl sets items of something that is not a dict")
        return self.stack[-1]


class _Dispatch(dict):
    """Opcode byte -> handler; an opcode outside the table is refused."""

    def __missing__(self, code: int) -> Callable:
        raise _Refused("its data.pkl uses a pickle opcode a TorchScript archive does not")


def _dispatch() -> _Dispatch:
    base = pickle._Unpickler.dispatch  # noqa: SLF001
    table = _Dispatch({getattr(pickle, name)[0]: base[getattr(pickle, name)[0]] for name in _PLAIN_OPCODES})
    for name, handler in (("REDUCE", _ArchiveUnpickler.load_reduce), ("NEWOBJ", _ArchiveUnpickler.load_newobj),
                          ("BUILD", _ArchiveUnpickler.load_build), ("APPEND", _ArchiveUnpickler.load_append),
                          ("APPENDS", _ArchiveUnpickler.load_appends), ("SETITEM", _ArchiveUnpickler.load_setitem),
                          ("SETITEMS", _ArchiveUnpickler.load_setitems)):
        table[getattr(pickle, name)[0]] = handler
    return table


_ArchiveUnpickler.dispatch = _dispatch()


# -- the globals a weights archive names, implemented here ------------------------------------------------------------
def _is_count(value: Any) -> bool:
    return type(value) is int and value >= 0


def _rebuild_tensor(storage: Any, offset: Any, size: Any, stride: Any, requires_grad: Any, hooks: Any,
                    metadata: Any = None) -> Tensor:
    """``torch._utils._rebuild_tensor_v2``: a view of ``storage``, checked to lie inside it."""
    if not (isinstance(storage, _Storage) and _is_count(offset) and isinstance(size, tuple)
            and isinstance(stride, tuple) and len(size) == len(stride) and all(map(_is_count, size))
            and all(map(_is_count, stride)) and isinstance(requires_grad, bool)):
        raise _Refused("its data.pkl describes a tensor in a form torch.jit.save does not write")
    if hooks or metadata:  # backward hooks are code; tensor metadata is not part of weights
        raise _Refused("a tensor in it carries hooks or metadata")
    if all(size):
        end = offset + sum((n - 1) * s for n, s in zip(size, stride)) + 1
        if end > storage.data.numel():
            raise _Refused("a tensor reaches past the end of its storage")
    return storage.data.as_strided(size, stride, offset)


def _rebuild_parameter(data: Any, requires_grad: Any, hooks: Any) -> Tensor:
    """``torch._utils._rebuild_parameter``: its tensor (a state dict holds tensors)."""
    if not isinstance(data, Tensor) or hooks:
        raise _Refused("its data.pkl describes a parameter in a form torch.jit.save does not write")
    return data


def _same(value: Any) -> Any:
    """``torch.jit._pickle.build_*list``: the list itself."""
    if not isinstance(value, list):
        raise _Refused("its data.pkl builds a list from something that is not one")
    return value


def _untagged(value: Any, type_str: Any) -> Any:
    """``torch.jit._pickle.restore_type_tag``: the value (the tag only matters to TorchScript's types)."""
    return value


_FUNCTIONS: dict[tuple[str, str], Callable] = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("collections", "OrderedDict"): OrderedDict,
    ("torch.jit._pickle", "build_intlist"): _same,
    ("torch.jit._pickle", "build_doublelist"): _same,
    ("torch.jit._pickle", "build_boollist"): _same,
    ("torch.jit._pickle", "build_tensorlist"): _same,
    ("torch.jit._pickle", "restore_type_tag"): _untagged,
}


# -- from the module tree to a state dict ---------------------------------------------------------------------------
def _module_tensors(tree: Any) -> dict[str, Tensor]:
    """Every tensor attribute of every module, depth first in attribute order (as ``state_dict()`` lists them),
    under its dotted path."""
    if not isinstance(tree, _Record):
        raise _Refused("its data.pkl does not hold a module")
    state: dict[str, Tensor] = {}
    seen: set[int] = set()
    pending = [("", tree)]
    while pending:
        prefix, record = pending.pop()
        if id(record) in seen:
            raise _Refused("a module appears twice in its module tree")
        seen.add(id(record))
        attributes = getattr(record, "attributes", None)
        if attributes is None:
            raise _Refused("a module in it has no attributes")
        children = []
        for name, value in attributes.items():
            if isinstance(value, Tensor):
                state[prefix + name] = value
            elif isinstance(value, _Record):
                children.append((f"{prefix}{name}.", value))
        pending.extend(reversed(children))
    return state


def _check_total(state: dict[str, Tensor], archive_size: int) -> None:
    """The tensors together hold no more bytes than the file: views that overlap or repeat (stride 0) would
    otherwise let a tiny file describe a model of any size, allocated when it is built."""
    total = sum(t.numel() * t.element_size() for t in state.values())
    if total > archive_size:
        raise _Refused(f"its tensors add up to {total} bytes, more than the file's {archive_size}: they overlap")
