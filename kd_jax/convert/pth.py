"""`.pth` files read and written without PyTorch: tensors are numpy arrays.

    obj = pth.load("ckpt_epoch_240.pth")    # e.g. {"model": OrderedDict(key -> np.ndarray), ...}
    pth.save({"fc.weight": w, ...}, "out.pth")   # what torch.save(dict of tensors) writes

`save` writes the zip layout (below) for a flat state dict; `torch.load(path)` (weights_only=True,
its default) gives the same dict of tensors, bit for bit (see `save`).

The three layouts `torch.save` has written:
  * zip (torch >= 1.6): `<prefix>/data.pkl` plus one record `<prefix>/data/<key>` per storage
    and a `<prefix>/byteorder` record ("little" or "big"; absent means little);
  * legacy stream (torch 0.1.10 to 1.5, and `_use_new_zipfile_serialization=False`): pickles
    of the magic number, the protocol version and the machine's sizes, the object pickle, the
    list of storage keys, then per key its element count (int64) and raw bytes, little-endian.
    RepDistiller's 2019 CIFAR teachers were written by torch 1.x in this layout;
  * tar (torch before 0.1.10, early 2017): members `storages`, `tensors` and `pickle`. The
    torchvision ResNet files of 2017 that mdistiller's ImageNet teachers are (e.g.
    resnet34-333f7ec4.pth) use it; torch's own weights_only loader refuses it.

Pickle policy, that of `torch.load(weights_only=True)` (torch/_weights_only_unpickler.py): a
pickle may name only the globals of `_allowed_globals`: the tensor rebuilders, storage classes
and dtypes, `torch.Size`, `torch.device`, `collections.OrderedDict`, and the data-only numpy
types (scalars, arrays, dtypes) and `argparse.Namespace` (rebuilt as a
types.SimpleNamespace, never as argparse's class) that training scripts store beside the
weights. Any other global, such as `os.system` in a crafted `__reduce__`, raises
UnsafePickleError before anything runs; no module is imported on a pickle's behalf. Persistent
ids may only name storages (tensors in the tar layout), and a tensor is rebuilt only from a
storage the reader made from the file's bytes.

Tensors are rebuilt from their storage, offset, sizes and strides (views and shared storages
included) as contiguous copies in native byte order, in the storage's dtype (bfloat16 as
ml_dtypes.bfloat16). Constructs torch can load but this reader does not rebuild (sparse,
quantized or nested tensors, tensor subclasses, the `torch.FloatTensor` + BUILD pickles of
torch 0.1.10-0.1.12) raise UnsupportedPthError.
"""

from __future__ import annotations

import _compat_pickle
import collections
import hashlib
import pickle
import struct
import sys
import tarfile
import types
import zipfile
from collections.abc import Mapping
from typing import Any, BinaryIO, Callable, NamedTuple

import ml_dtypes
import numpy as np

from kd_jax.convert.mapping import ConversionError

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C   # the legacy stream's first pickle
PROTOCOL_VERSION = 1001
_ZIP_MAGIC = b"PK\x03\x04"
_TAR_MEMBERS = {"storages", "tensors", "pickle"}

# torch storage class -> element dtype. UntypedStorage holds bytes.
_STORAGE_DTYPES = {
    "DoubleStorage": np.float64, "FloatStorage": np.float32, "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16, "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8,
    "BoolStorage": np.bool_, "UntypedStorage": np.uint8}
# What `save` writes: element dtype -> storage class, and the zip layout's fixed records.
_STORAGE_NAMES = {np.dtype(dtype): name for name, dtype in _STORAGE_DTYPES.items()
                  if name != "UntypedStorage"}
_ARCHIVE = "archive"        # the records' folder, as torch.save names it for a file object
_ZIP_VERSION = b"3\n"       # the `version` record torch's reader requires (its writer's value)
_ALIGNMENT = 64             # torch's writer starts each record's data at a multiple of this
# torch dtypes a checkpoint may hold as values (e.g. an optimizer's settings).
_TORCH_DTYPES = ("float64", "float32", "float16", "bfloat16", "int64", "int32", "int16", "int8",
                 "uint8", "bool")


class PthError(ConversionError):
    """The file is not a readable PyTorch checkpoint (corrupt, truncated, another format)."""


class UnsafePickleError(PthError):
    """The pickle names a global outside the allow-list: loading it would run code."""


class UnsupportedPthError(PthError):
    """A PyTorch construct this reader does not rebuild (torch.load can)."""


# Every object a pickle can name is immutable: builtin types and functions, and named tuples
# (no __dict__, no __setstate__, read-only fields), so a BUILD opcode aimed at one fails
# instead of changing what the next load gets.

class _StorageType(NamedTuple):
    """What a pickle's `torch.FloatStorage` (etc.) stands for: the storage's element dtype."""

    name: str
    dtype: np.dtype

    def __repr__(self) -> str:
        return f"torch.{self.name}"


class _Marker(NamedTuple):
    """A torch object a pickle may hold as data but not call: `torch.float32` as a value,
    `torch.FloatTensor` in the tar layout's tensor records."""

    name: str


class _Function(NamedTuple):
    """One of this module's functions, as a pickle may call it."""

    fn: Callable[..., Any]

    def __call__(self, *args: Any) -> Any:
        return self.fn(*args)


class _Storage(NamedTuple):
    """A storage as the reader makes it from the file's bytes (a pickle cannot build one)."""

    array: np.ndarray   # 1-d, C-contiguous, native byte order, of the storage's dtype


_NOT_READ_YET = object()   # the legacy stream's storages during its first pass


def _tensor(storage: Any, offset: int, size: Any, stride: Any) -> Any:
    """The tensor `storage[offset + sum_i idx_i * stride_i]` of shape `size`: a contiguous copy.
    offset, size, stride in elements."""
    if storage is _NOT_READ_YET:
        return None
    if not isinstance(storage, _Storage):
        raise PthError(f"a tensor's storage is a {type(storage).__name__}, not a storage")
    storage = storage.array
    size, stride = tuple(size), tuple(stride)
    if len(size) != len(stride) or not all(
            isinstance(n, int) and n >= 0 for n in (offset, *size, *stride)):
        raise PthError(f"invalid tensor geometry: offset {offset}, size {size}, stride {stride}")
    if 0 in size:
        return np.zeros(size, storage.dtype)
    last = offset + sum((n - 1) * s for n, s in zip(size, stride))
    if last >= storage.size:
        raise PthError(f"a tensor (offset {offset}, size {size}, stride {stride}) reaches "
                       f"element {last} of a storage of {storage.size}: a truncated file?")
    view = np.lib.stride_tricks.as_strided(
        storage[offset:], size, tuple(s * storage.itemsize for s in stride), writeable=False)
    return np.array(view, order="C")


def _rebuild_tensor(storage, storage_offset, size, stride):
    return _tensor(storage, storage_offset, size, stride)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks,
                       metadata=None):
    return _tensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad, backward_hooks):
    return data


def _rebuild_parameter_with_state(data, requires_grad, backward_hooks, state):
    return data


def _device(kind: str, index: Any = None) -> str:
    return kind if index is None else f"{kind}:{index}"


def _latin1(text: str, encoding: str = "utf-8") -> bytes:
    """`_codecs.encode` as protocol-2 pickles use it for bytes: latin-1 only."""
    if encoding not in ("latin1", "latin-1"):
        raise UnsafePickleError(f"_codecs.encode with encoding {encoding!r} (pickles of bytes "
                                "use latin1)")
    return text.encode("latin1")


def _allowed_globals() -> dict[str, Any]:
    """"module.name" -> the object a pickle gets for it; nothing else may be named."""
    multiarray = np._core.multiarray
    allowed: dict[str, Any] = {
        "collections.OrderedDict": collections.OrderedDict,
        "torch.Size": tuple,
        "builtins.set": set,
        "builtins.bytearray": bytearray,
        "builtins.complex": complex,
        "numpy.dtype": np.dtype,
        "numpy.ndarray": np.ndarray,
        # Training options: an attribute record (a C type), never argparse's class.
        "argparse.Namespace": types.SimpleNamespace,
        "_codecs.encode": _Function(_latin1),
        "torch.device": _Function(_device),
    }
    for fn in (_rebuild_tensor, _rebuild_tensor_v2, _rebuild_parameter,
               _rebuild_parameter_with_state):
        allowed[f"torch._utils.{fn.__name__}"] = _Function(fn)
    for core in ("numpy.core.multiarray", "numpy._core.multiarray"):   # numpy 1.x, 2.x names
        allowed[f"{core}.scalar"] = multiarray.scalar
        allowed[f"{core}._reconstruct"] = multiarray._reconstruct
    for name, dtype in _STORAGE_DTYPES.items():
        allowed[f"torch.{name}"] = _StorageType(name, np.dtype(dtype))
        allowed[f"torch.storage.{name}"] = allowed[f"torch.{name}"]
        if name != "UntypedStorage":   # the tar layout names the tensor type of each tensor
            tensor_type = f"torch.{name[:-len('Storage')]}Tensor"
            allowed[tensor_type] = _Marker(tensor_type)
    for name in _TORCH_DTYPES:
        allowed[f"torch.{name}"] = _Marker(f"torch.{name}")
    return allowed


_ALLOWED = _allowed_globals()
_UNSUPPORTED = ("torch._utils._rebuild_", "torch._tensor._rebuild_from_type", "torch.nested",
                "torch.Tensor", "torch.nn.parameter.Parameter", "torch.serialization._get_layout",
                "torch.per_", "torch.sparse", "torch.q")


class _Unpickler(pickle.Unpickler):
    """pickle.Unpickler that resolves globals only through _ALLOWED and hands persistent ids
    to `persistent`."""

    def __init__(self, file: BinaryIO, persistent: Callable[[Any], Any]):
        super().__init__(file, encoding="utf-8")   # torch.load's encoding for Python 2 strings
        self._persistent = persistent

    def find_class(self, module: str, name: str) -> Any:
        # Python 2 names (__builtin__, copy_reg, ...), as pickle's own find_class maps them.
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        full = f"{module}.{name}"
        if full in _ALLOWED:
            return _ALLOWED[full]
        if full.startswith(_UNSUPPORTED):
            raise UnsupportedPthError(f"it holds {full}, which kd_jax's reader does not rebuild "
                                      "(torch.load(weights_only=True) does)")
        raise UnsafePickleError(
            f"it names the global {full}, which a weights-only load refuses: unpickling it "
            "could run arbitrary code (allowed: tensors, storages, containers, numbers, "
            "strings, numpy scalars/arrays, argparse.Namespace)")

    def persistent_load(self, pid: Any) -> Any:
        return self._persistent(pid)


def _storage(raw: bytes, dtype: np.dtype, byteorder: str) -> _Storage:
    """The storage of raw bytes written with `byteorder`."""
    if len(raw) % dtype.itemsize:
        raise PthError(f"a {dtype} storage of {len(raw)} bytes: a truncated file?")
    if dtype.itemsize == 1 or byteorder == sys.byteorder:
        return _Storage(np.frombuffer(raw, dtype))
    # Swap whole elements (every supported dtype is one scalar): read as unsigned ints.
    swapped = np.frombuffer(raw, f"{'>' if byteorder == 'big' else '<'}u{dtype.itemsize}")
    return _Storage(swapped.astype(f"=u{dtype.itemsize}").view(dtype))


def _storage_id(pid: Any) -> tuple[_StorageType, str, int, Any]:
    """(type, key, element count, view) of a zip/legacy persistent id
    ("storage", type, key, location, numel[, view])."""
    if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] in ("storage", b"storage")
            and isinstance(pid[1], _StorageType) and isinstance(pid[4], int)):
        raise PthError(f"unexpected persistent id {str(pid)[:100]} (only storages are allowed)")
    key = pid[2].decode("ascii") if isinstance(pid[2], bytes) else str(pid[2])
    return pid[1], key, pid[4], pid[5] if len(pid) == 6 else None


def _load_zip(f: BinaryIO) -> Any:
    with zipfile.ZipFile(f) as zf:
        names = zf.namelist()
        pickles = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
        if not pickles:
            what = ("a TorchScript archive (torch.jit.save)" if any(
                n.endswith("/constants.pkl") for n in names) else "a zip file without data.pkl")
            raise UnsupportedPthError(f"it is {what}, not a torch.save checkpoint")
        prefix = pickles[0][: -len("data.pkl")]
        byteorder = (zf.read(prefix + "byteorder").decode("ascii")
                     if prefix + "byteorder" in names else "little")
        if byteorder not in ("little", "big"):
            raise PthError(f"unknown byte order {byteorder!r} in {prefix}byteorder")
        storages: dict[str, _Storage] = {}

        def storage(pid):
            storage_type, key, numel, _ = _storage_id(pid)
            if key not in storages:
                raw = zf.read(f"{prefix}data/{key}")
                storages[key] = _storage(raw, storage_type.dtype, byteorder)
            if storages[key].array.size < numel:
                raise PthError(f"storage {key} holds {storages[key].array.size} elements, the "
                               f"pickle {numel}: a truncated file?")
            return storages[key]

        with zf.open(pickles[0]) as p:
            return _Unpickler(p, storage).load()


def _read_exact(f: BinaryIO, n: int) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise PthError(f"the file ends {n - len(data)} bytes early: a truncated file?")
    return data


def _read_counted_storage(f: BinaryIO, dtype: np.dtype) -> _Storage:
    """Element count (int64, little-endian), then that many elements, little-endian."""
    (numel,) = struct.unpack("<q", _read_exact(f, 8))
    if numel < 0:
        raise PthError(f"a storage of {numel} elements")
    return _storage(_read_exact(f, numel * dtype.itemsize), dtype, "little")


def _no_persistent(pid: Any) -> Any:
    raise PthError(f"unexpected persistent id {str(pid)[:100]} in a header pickle")


def _load_legacy(f: BinaryIO) -> Any:
    start = f.tell()
    try:
        magic = _Unpickler(f, _no_persistent).load()
    except (pickle.UnpicklingError, EOFError):   # bytes that are no pickle at all
        magic = None
    if magic != MAGIC_NUMBER:
        f.seek(start)
        raise PthError(f"not a PyTorch checkpoint: neither a zip archive nor a tar file nor "
                       f"a pickle stream opening with torch.save's magic number (it starts "
                       f"with {f.read(16)!r})")
    version = _Unpickler(f, _no_persistent).load()
    if version != PROTOCOL_VERSION:
        raise UnsupportedPthError(f"legacy protocol version {version} (known: "
                                  f"{PROTOCOL_VERSION})")
    _Unpickler(f, _no_persistent).load()   # sys_info: the storages are little-endian anyway
    start = f.tell()
    # The storages' bytes follow the object pickle: a first pass records each storage's type,
    # then the bytes are read, then the pickle is read again with them.
    seen: dict[str, tuple[_StorageType, int]] = {}   # key -> (type, element count)

    def record(pid):
        storage_type, key, numel, view = _storage_id(pid)
        if view is not None:
            raise UnsupportedPthError("a storage view (torch < 0.4)")
        seen[key] = (storage_type, numel)
        return _NOT_READ_YET

    _Unpickler(f, record).load()
    keys = _Unpickler(f, _no_persistent).load()
    if not isinstance(keys, list) or sorted(map(str, keys)) != sorted(seen):
        raise PthError("the storage list does not match the pickle's storages")
    storages = {}
    for key in map(str, keys):
        storage_type, numel = seen[key]
        storages[key] = _read_counted_storage(f, storage_type.dtype)
        if storages[key].array.size != numel:
            raise PthError(f"storage {key}: {storages[key].array.size} elements, the pickle "
                           f"{numel}")
    f.seek(start)
    return _Unpickler(f, lambda pid: storages[_storage_id(pid)[1]]).load()


def _load_tar(tar: tarfile.TarFile) -> Any:
    """The layout of torch < 0.1.10 (what torch's legacy_load reads)."""
    objects: dict[int, Any] = {}   # storages and tensors share one key space
    with tar.extractfile("storages") as f:
        for _ in range(_Unpickler(f, _no_persistent).load()):
            key, _, storage_type = _Unpickler(f, _no_persistent).load()
            if not isinstance(storage_type, _StorageType):
                raise PthError(f"storage {key}: type {storage_type!r} is not a storage type")
            objects[int(key)] = _read_counted_storage(f, storage_type.dtype)
        for target, root, offset, numel in _Unpickler(f, _no_persistent).load():
            objects[int(target)] = _Storage(objects[int(root)].array[offset: offset + numel])
    with tar.extractfile("tensors") as f:
        for _ in range(_Unpickler(f, _no_persistent).load()):
            key, storage_id, _ = _Unpickler(f, _no_persistent).load()
            (ndim,) = struct.unpack("<i", _read_exact(f, 4))
            _read_exact(f, 4)   # ndim was written as 8 bytes
            size = struct.unpack(f"<{ndim}q", _read_exact(f, 8 * ndim))
            stride = struct.unpack(f"<{ndim}q", _read_exact(f, 8 * ndim))
            (offset,) = struct.unpack("<q", _read_exact(f, 8))
            objects[int(key)] = _tensor(objects[int(storage_id)], offset, size, stride)

    def by_key(pid):
        if isinstance(pid, tuple):   # ("module", class, source file, source): a pickled model
            raise UnsupportedPthError("a pickled nn.Module (torch < 0.1.10): it names its class")
        return objects[int(pid)]

    with tar.extractfile("pickle") as f:
        return _Unpickler(f, by_key).load()


def file_format(path: str) -> str:
    """"zip", "tar" or "legacy" (the pickle stream): the layout torch.save wrote."""
    with open(path, "rb") as f:
        if f.read(4) == _ZIP_MAGIC:
            return "zip"
    if tarfile.is_tarfile(path):
        try:
            with tarfile.open(path) as tar:   # torch wrote sys_info or pickle first
                first = tar.next()
        except tarfile.TarError:
            first = None
        if first is not None and first.name in _TAR_MEMBERS | {"sys_info"}:
            return "tar"
    return "legacy"


def is_torch_tar(path: str) -> bool:
    """A tar file that is one checkpoint of torch < 0.1.10, not an archive of checkpoints."""
    return file_format(path) == "tar"


def load(path: str) -> Any:
    """The object `torch.save` wrote to `path`, tensors as numpy arrays (see the module doc).

    Raises UnsafePickleError (a global outside the allow-list; nothing was run),
    UnsupportedPthError, PthError (not a readable checkpoint), or the OSError of opening it."""
    fmt = "unknown"
    try:
        fmt = file_format(path)
        if fmt == "tar":
            with tarfile.open(path) as tar:
                return _load_tar(tar)
        with open(path, "rb") as f:
            return _load_zip(f) if fmt == "zip" else _load_legacy(f)
    except (PthError, OSError):
        raise
    except Exception as e:  # noqa: BLE001  whatever a corrupt file makes the parsers raise
        raise PthError(f"not a readable PyTorch checkpoint ({fmt} layout: {type(e).__name__}: "
                       f"{' '.join(str(e).split())[:200]})") from None


# --- Writing: the zip layout of torch.save, for a flat state dict ---

def _pickle_str(text: str) -> bytes:
    raw = text.encode("utf-8")
    return pickle.BINUNICODE + struct.pack("<I", len(raw)) + raw


def _pickle_int(n: int) -> bytes:
    return pickle.dumps(n, protocol=2)[2:-1]   # pickle's own opcode choice; ints have no memo


def _pickle_global(module: str, name: str) -> bytes:
    return pickle.GLOBAL + f"{module}\n{name}\n".encode("ascii")


def _pickle_tuple(items: list[bytes]) -> bytes:
    return pickle.MARK + b"".join(items) + pickle.TUPLE


def _pickle_tensor(key: str, array: np.ndarray) -> bytes:
    """`torch._utils._rebuild_tensor_v2(storage, 0, shape, strides, False, OrderedDict())`
    over the persistent id ("storage", torch.<Type>Storage, key, "cpu", numel): what
    torch.save pickles for a contiguous tensor that owns its storage. Strides in elements,
    C order: stride_i = prod(shape[i+1:])."""
    strides = [int(np.prod(array.shape[i + 1:], dtype=np.int64)) for i in range(array.ndim)]
    storage_type = _STORAGE_NAMES[array.dtype.newbyteorder("=")]
    storage_id = _pickle_tuple([
        _pickle_str("storage"), _pickle_global("torch", storage_type), _pickle_str(key),
        _pickle_str("cpu"), _pickle_int(array.size)])
    no_hooks = _pickle_global("collections", "OrderedDict") + pickle.EMPTY_TUPLE + pickle.REDUCE
    return (_pickle_global("torch._utils", "_rebuild_tensor_v2") + _pickle_tuple([
        storage_id + pickle.BINPERSID, _pickle_int(0),
        _pickle_tuple([_pickle_int(n) for n in array.shape]),
        _pickle_tuple([_pickle_int(n) for n in strides]), pickle.NEWFALSE, no_hooks])
        + pickle.REDUCE)


def _state_dict_pickle(arrays: dict[str, np.ndarray]) -> bytes:
    """The protocol-2 pickle of {key: tensor}, the i-th tensor over storage key str(i)."""
    items = [_pickle_str(key) + _pickle_tensor(str(i), array)
             for i, (key, array) in enumerate(arrays.items())]
    body = pickle.MARK + b"".join(items) + pickle.SETITEMS if items else b""
    return pickle.PROTO + b"\x02" + pickle.EMPTY_DICT + body + pickle.STOP


def _write_record(zf: zipfile.ZipFile, f: BinaryIO, name: str, data: memoryview) -> None:
    """One stored (uncompressed) record whose data starts at a multiple of _ALIGNMENT bytes,
    padded as torch's writer (miniz) pads: an extra field "FB" of "Z"s in the local header.
    The header is 30 bytes + the name + the extra field (+ 20 for a zip64 record's sizes);
    zip64 exactly when forced here (zipfile adds it by itself only for a known file_size)."""
    zip64 = data.nbytes >= zipfile.ZIP64_LIMIT
    header = 30 + len(name.encode("ascii")) + 4 + (20 if zip64 else 0)
    pad = -(f.tell() + header) % _ALIGNMENT
    info = zipfile.ZipInfo(name)   # 1980-01-01 00:00: the same state dict, the same bytes
    info.extra = b"FB" + struct.pack("<H", pad) + b"Z" * pad
    with zf.open(info, "w", force_zip64=zip64) as dest:
        dest.write(data)


def save(state_dict: Mapping[str, Any], path: str) -> None:
    """Writes `state_dict` (str key -> array) to `path` as `torch.save` writes a dict of
    tensors: `torch.load(path)` (weights_only=True) gives {key: tensor}, each with the array's
    dtype, shape and bytes; `load(path)` gives the arrays back.

    Records under `archive/`: `data.pkl` (the pickle, tensors as persistent ids of storages),
    `byteorder` ("little"), `data/<i>` (the i-th array's bytes, C order, little-endian),
    `version` and `.data/serialization_id` (a hash of the other records' names, sizes and
    CRC-32s: the same dict gives the same file). Not written: `.format_version` and
    `.storage_alignment`, which let recent torch compute record offsets from its own writer's
    layout (a data descriptor after each record) instead of reading them; Python's zipfile
    writes none, so torch must read the real offsets.

    Dtypes: those of the storage types (float32/64/16, bfloat16 (ml_dtypes), int64/32/16/8,
    uint8, bool); anything else raises ValueError, a key that is not a str TypeError, before
    the file is opened.
    """
    arrays: dict[str, np.ndarray] = {}
    for key, value in state_dict.items():
        if not isinstance(key, str):
            raise TypeError(f"state dict key {key!r} is a {type(key).__name__}, not a str")
        array = np.asarray(value)
        dtype = array.dtype.newbyteorder("=")
        if dtype not in _STORAGE_NAMES:
            raise ValueError(f"{key}: dtype {array.dtype} has no torch storage type (writable: "
                             f"{', '.join(sorted(str(d) for d in _STORAGE_NAMES))})")
        # C order, little-endian (np.ascontiguousarray would make a 0-d array 1-d).
        arrays[key] = np.asarray(array, dtype.newbyteorder("<"), order="C")
    records = [("data.pkl", memoryview(_state_dict_pickle(arrays))),
               ("byteorder", memoryview(b"little"))]
    records += [(f"data/{i}", memoryview(a.reshape(-1).view(np.uint8)))
                for i, a in enumerate(arrays.values())]
    records.append(("version", memoryview(_ZIP_VERSION)))
    with open(path, "wb") as f, zipfile.ZipFile(f, "w", zipfile.ZIP_STORED) as zf:
        for name, data in records:
            _write_record(zf, f, f"{_ARCHIVE}/{name}", data)
        # 40 digits, as torch writes it: a hash of the names, sizes and CRC-32s zipfile took.
        digest = hashlib.blake2b(repr([(i.filename, i.file_size, i.CRC) for i in zf.infolist()])
                                 .encode("ascii"), digest_size=16).digest()
        high, low = struct.unpack(">QQ", digest)
        _write_record(zf, f, f"{_ARCHIVE}/.data/serialization_id",
                      memoryview(f"{high:020d}{low:020d}".encode("ascii")))
