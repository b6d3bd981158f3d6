"""Read the weights of a TorchScript archive without loading it as TorchScript.

OpenAI released its CLIPs as TorchScript archives (``ViT-B-16.pt`` …). ``torch.jit.load``
would compile and run the archive's code; ``torch.load(weights_only=True)`` refuses such
archives. Here the archive is read as what it is, a zip file:

- ``<archive>/data.pkl``: the module tree, pickled. Every module is an object of a
  class named ``__torch__.<python path>`` built with an empty constructor and filled
  with a dict of its attributes (parameters, buffers, sub-modules, plain values);
- ``<archive>/data/<key>``: the raw bytes of each tensor storage, referenced from the
  pickle by persistent id ``("storage", <dtype>Storage, key, location, numel)``.

The pickle is read with an unpickler that resolves only the names such archives use
for data (tensor rebuilding, storage dtypes, ``OrderedDict``, TorchScript's list
builders); every ``__torch__.*`` class becomes an inert attribute holder, and any
other global stops the read with an error naming it. No code from the file runs.
The tensors are then flattened into a state dict by attribute path
(``visual.transformer.resblocks.0.attn.in_proj_weight`` …), the keys
``model.state_dict()`` of the loaded archive would have (plus any tensor attributes).
"""

from __future__ import annotations

import collections
import pickle
import zipfile
from pathlib import Path

import torch

_DTYPES = {
    "FloatStorage": torch.float32, "HalfStorage": torch.float16, "BFloat16Storage": torch.bfloat16,
    "DoubleStorage": torch.float64, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}


class TorchScriptError(ValueError):
    """The archive could not be read; the message names the file and the problem."""


class _Module:
    """Stand-in for a pickled ``__torch__.*`` object: keeps its attribute dict."""

    def __init__(self, *args):
        self.attributes: dict = {}

    def __setstate__(self, state):
        if isinstance(state, tuple):  # (dict, slot state)
            state = state[0]
        self.attributes = dict(state) if isinstance(state, dict) else {}


def _rebuild_tensor(storage, offset, size, stride, *_ignored):
    """``torch._utils._rebuild_tensor_v2`` over a flat tensor standing for the storage."""
    return torch.as_strided(storage, tuple(size), tuple(stride), offset)


def _list(*args):
    return list(args[0]) if len(args) == 1 else list(args)


def _identity(x, *_ignored):
    return x


_ALLOWED = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch.jit._pickle", "build_intlist"): _list,
    ("torch.jit._pickle", "build_doublelist"): _list,
    ("torch.jit._pickle", "build_boollist"): _list,
    ("torch.jit._pickle", "build_tensorlist"): _list,
    ("torch.jit._pickle", "build_tensor_from_id"): _identity,
    ("torch.jit._pickle", "restore_type_tag"): _identity,
}


class _Unpickler(pickle.Unpickler):
    def __init__(self, file, archive: zipfile.ZipFile, prefix: str, path: Path):
        super().__init__(file)
        self.archive, self.prefix, self.path = archive, prefix, path
        self.storages: dict[str, torch.Tensor] = {}

    def find_class(self, module: str, name: str):
        if module.startswith("__torch__"):
            return _Module
        if module == "torch" and name in _DTYPES:
            return _DTYPES[name]
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        raise TorchScriptError(f"{self.path}: the archive's data refers to {module}.{name}, "
                               "which a weights-only read does not resolve")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) >= 3 and pid[0] == "storage"):
            raise TorchScriptError(f"{self.path}: unexpected persistent id {pid!r}")
        dtype, key = pid[1], str(pid[2])
        if key not in self.storages:
            name = f"{self.prefix}data/{key}"
            try:
                raw = bytearray(self.archive.read(name))
            except KeyError:
                raise TorchScriptError(f"{self.path}: storage {name} is missing") from None
            self.storages[key] = torch.frombuffer(raw, dtype=dtype) if raw else torch.empty(0, dtype=dtype)
        return self.storages[key]


def is_torchscript_archive(path: str | Path) -> bool:
    """Whether ``path`` is a zip with TorchScript's layout (``*/data.pkl`` beside ``*/code/``
    or ``*/constants.pkl``)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
    return any(n.endswith("/constants.pkl") or "/code/" in n for n in names) and \
        any(n.endswith("/data.pkl") for n in names)


def _flatten(obj, prefix: str, out: dict[str, torch.Tensor]) -> None:
    for name, value in obj.attributes.items():
        key = f"{prefix}{name}"
        if isinstance(value, torch.Tensor):
            out[key] = value.clone()
        elif isinstance(value, _Module):
            _flatten(value, key + ".", out)


def read_torchscript_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a TorchScript archive by attribute path (see the module docstring)."""
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as z:
            pkl = [n for n in z.namelist() if n.endswith("data.pkl") and n.count("/") == 1]
            if not pkl:
                raise TorchScriptError(f"{path}: no <archive>/data.pkl in this zip file")
            prefix = pkl[0][: -len("data.pkl")]
            with z.open(pkl[0]) as f:
                root = _Unpickler(f, z, prefix, path).load()
    except (zipfile.BadZipFile, pickle.UnpicklingError, EOFError) as e:
        raise TorchScriptError(f"{path}: not a readable TorchScript archive ({type(e).__name__}: {e})") from e
    if not isinstance(root, _Module):
        raise TorchScriptError(f"{path}: the archive does not hold a module")
    out: dict[str, torch.Tensor] = {}
    _flatten(root, "", out)
    return out
