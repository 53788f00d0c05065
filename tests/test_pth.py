"""kd_jax.convert.pth: .pth files read and written without PyTorch, bit for bit, under
weights_only's policy.

Files are written by torch.save in its zip and legacy layouts (`_use_new_zipfile_serialization=
False`), and in the tar layout of torch < 0.1.10, which torch no longer writes, by
`save_tar_layout` below: each such file is first read back by torch.load(weights_only=False),
the oracle that the writer is right. Oracle for the reader: the torch tensors saved, compared
by their raw bytes (bfloat16 included), shapes and dtypes. State dicts: every reference dump of
tests/data/torch_state_dicts (key, shape, dtype), filled with random values.

The writer (`pth.save`, the zip layout): oracle torch.load(weights_only=True), the same
comparison of dtypes, shapes and raw bytes, then the reader reads the file back too.
"""

from __future__ import annotations

import argparse
import collections
import io
import os
import pickle
import re
import struct
import sys
import tarfile

import ml_dtypes
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="needs torch: the oracle writes and reads .pth files with torch")

from kd_jax import convert  # noqa: E402
from kd_jax.convert import pth  # noqa: E402
from kd_jax.convert.__main__ import main as convert_main  # noqa: E402
from kd_jax.convert.torch_files import MissingTorchError, load_torch_file  # noqa: E402

DUMPS = os.path.join(os.path.dirname(__file__), "data", "torch_state_dicts")
DUMP_NAMES = sorted(f[:-4] for f in os.listdir(DUMPS) if f.endswith(".txt"))
LAYOUTS = ["zip", "legacy", "tar"]
NUMPY_DTYPES = {torch.float32: np.float32, torch.float64: np.float64, torch.float16: np.float16,
                torch.bfloat16: ml_dtypes.bfloat16, torch.int64: np.int64, torch.int32: np.int32,
                torch.int16: np.int16, torch.int8: np.int8, torch.uint8: np.uint8,
                torch.bool: np.bool_}


def dump_entries(name: str) -> list[tuple[str, tuple[int, ...], str]]:
    """The reference dump's (key, shape, dtype name) in state_dict order."""
    body = open(os.path.join(DUMPS, f"{name}.txt")).read().split(
        "# state_dict (key  shape  dtype)\n", 1)[1]
    entries = []
    for line in body.splitlines():
        if line.strip():
            key, shape, dtype = line.split("\t")
            entries.append((key, tuple(int(s) for s in re.findall(r"\d+", shape)), dtype))
    return entries


def dump_state_dict(name: str, seed: int = 0) -> collections.OrderedDict:
    """The reference dump's keys, shapes and dtypes, with random values."""
    gen = torch.Generator().manual_seed(seed)
    return collections.OrderedDict(
        (key, torch.randn(size, generator=gen) if dtype == "float32" else
         torch.randint(0, 10**6, size, generator=gen, dtype=getattr(torch, dtype)))
        for key, size, dtype in dump_entries(name))


def tensors(obj) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, dict):
        return [t for v in obj.values() for t in tensors(v)]
    return []


def save_tar_layout(obj, path: str) -> None:
    """torch.save as torch < 0.1.10 wrote it: the members `storages` (count, then per storage
    (key, location, storage type) and its element count + bytes, then the views), `tensors`
    (count, then per tensor (key, storage key, tensor type), ndim, sizes, strides, offset) and
    `pickle` (the object, tensors as persistent ids), as torch.serialization's legacy_load
    reads them."""
    storages, keys = {}, {}
    for t in tensors(obj):
        storage = t.untyped_storage()
        storages.setdefault(storage.data_ptr(), (len(storages) + 1, t.dtype, storage))
        keys[id(t)] = 1000 + len(keys)

    class Pickler(pickle.Pickler):
        def persistent_id(self, o):
            return str(keys[id(o)]) if isinstance(o, torch.Tensor) else None

    def dump(f, value):
        pickle.dump(value, f, protocol=2)

    members = {"sys_info": io.BytesIO(), "pickle": io.BytesIO(), "tensors": io.BytesIO(),
               "storages": io.BytesIO()}
    dump(members["sys_info"], {"protocol_version": 1001, "little_endian": True,
                               "type_sizes": {"short": 2, "int": 4, "long": 8}})
    Pickler(members["pickle"], protocol=2).dump(obj)
    f = members["storages"]
    dump(f, len(storages))
    for key, dtype, storage in storages.values():
        typed = torch.empty(0, dtype=dtype).set_(storage)   # the whole storage, 1-d
        storage_class = getattr(torch, torch.empty(0, dtype=dtype).type().split(".")[-1]
                                .replace("Tensor", "Storage"))
        dump(f, (key, "cpu", storage_class))
        f.write(struct.pack("<q", typed.numel()))
        f.write(typed.view(torch.uint8).numpy().tobytes())
    dump(f, [])   # no storage views
    f = members["tensors"]
    ts = tensors(obj)
    dump(f, len(ts))
    for t in ts:
        tensor_class = getattr(torch, t.type().split(".")[-1])
        dump(f, (keys[id(t)], storages[t.untyped_storage().data_ptr()][0], tensor_class))
        f.write(struct.pack("<ii", t.dim(), 0))
        f.write(struct.pack(f"<{t.dim()}q", *t.shape))
        f.write(struct.pack(f"<{t.dim()}q", *t.stride()))
        f.write(struct.pack("<q", t.storage_offset()))
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data.getvalue())
            tar.addfile(info, io.BytesIO(data.getvalue()))


def save(obj, path, layout: str, check_writer: bool = True) -> str:
    path = str(path)
    if layout == "tar":
        save_tar_layout(obj, path)
        if check_writer:   # the writer, checked by torch
            assert_same(torch.load(path, weights_only=False), obj)
    else:
        torch.save(obj, path, _use_new_zipfile_serialization=layout == "zip")
    assert pth.file_format(path) == layout
    return path


def raw_bytes(t) -> np.ndarray:
    """The bytes of a tensor or array in C order, as uint8 (a view where it is contiguous)."""
    if isinstance(t, torch.Tensor):
        return t.contiguous().reshape(-1).view(torch.uint8).numpy()
    return np.ascontiguousarray(t).reshape(-1).view(np.uint8)


def assert_same(got, want):
    """`got` (numpy from the reader, or torch) holds `want`'s tensors bit for bit."""
    if isinstance(want, torch.Tensor):
        if isinstance(got, torch.Tensor):
            assert got.dtype == want.dtype
        else:
            assert got.dtype == np.dtype(NUMPY_DTYPES[want.dtype]) and got.flags.c_contiguous
        assert tuple(got.shape) == tuple(want.shape)
        assert np.array_equal(raw_bytes(got), raw_bytes(want))
    elif isinstance(want, dict):
        assert list(got) == list(want) and type(got) is type(want)
        for key in want:
            assert_same(got[key], want[key])
    else:
        assert got == want


@pytest.mark.parametrize("name", DUMP_NAMES)
def test_every_zoo_state_dict_reads_back_bit_for_bit(tmp_path, name):
    """Both layouts torch writes today; the tar layout for the ImageNet models, published in it
    (test_views_offsets_shared_storages_and_dtypes covers it for every dtype and geometry)."""
    sd = dump_state_dict(name)
    for layout in LAYOUTS if name.startswith("imagenet_") else ["zip", "legacy"]:
        path = save(sd, tmp_path / f"{layout}.pth", layout, check_writer=False)
        assert_same(pth.load(path), sd)
        os.remove(path)


def geometry_state_dict() -> collections.OrderedDict:
    """Views, offsets, strides, shared storages, every dtype a checkpoint holds, 0-d, empty."""
    w = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    return collections.OrderedDict(
        w=w, transposed=w.t(), offset=w[1:, 2:], strided=w[:, ::2], row=w[3],
        broadcast=torch.ones(3, 1).expand(3, 4), scalar=torch.tensor(7),
        empty=torch.zeros(0, 3), f16=torch.randn(5).half(), bf16=torch.randn(2, 3).bfloat16(),
        bf16_view=torch.randn(4, 4).bfloat16()[1:, ::2], f64=torch.randn(3).double(),
        i32=torch.arange(4, dtype=torch.int32), i8=torch.tensor([-3, 4], dtype=torch.int8),
        u8=torch.tensor([250, 1], dtype=torch.uint8), flags=torch.tensor([True, False]),
        num_batches_tracked=torch.tensor(12345678901, dtype=torch.int64))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_views_offsets_shared_storages_and_dtypes(tmp_path, layout):
    sd = geometry_state_dict()
    assert sd["offset"].storage_offset() == 8 and sd["w"].untyped_storage().data_ptr() == \
        sd["transposed"].untyped_storage().data_ptr()
    got = pth.load(save(sd, tmp_path / "x.pth", layout))
    assert_same(got, sd)
    got["w"][0, 0] = -1.0   # copies: no read array aliases another
    assert got["transposed"][0, 0] == 0.0 and got["row"][0] == 18.0


@pytest.mark.parametrize("layout", ["zip", "legacy"])
def test_checkpoint_wrappers_and_training_options(tmp_path, layout):
    """RepDistiller's checkpoint dict, with a numpy accuracy and the run's options."""
    sd = dump_state_dict("resnet8")
    path = save({"model": sd, "epoch": 240, "best_acc": np.float64(71.25),
                 "opt": argparse.Namespace(lr=0.05, milestones=[150, 180]),
                 "optimizer": {"state": {}, "param_groups": [{"lr": 0.05, "nesterov": False}]},
                 "param": torch.nn.Parameter(torch.ones(2)), "dtype": torch.float32,
                 "size": torch.Size([2, 3])}, tmp_path / "ckpt.pth", layout)
    obj = pth.load(path)
    assert_same(obj["model"], sd)
    assert obj["opt"].lr == 0.05 and obj["opt"].milestones == [150, 180]
    assert (obj["best_acc"], obj["epoch"], obj["size"]) == (71.25, 240, (2, 3))
    np.testing.assert_array_equal(obj["param"], np.ones(2, np.float32))
    ckpt = convert.read_checkpoint(path)
    assert (ckpt.accuracy, ckpt.epoch, ckpt.source_format) == (
        71.25, 240, "checkpoint dict ('model' entry)")


@pytest.mark.skipif(sys.byteorder != "little",
                    reason="writes a big-endian file by swapping bytes on a little-endian machine")
def test_big_endian_zip(tmp_path, monkeypatch):
    """A zip written on a big-endian machine: byteorder record "big", elements swapped."""
    sd = collections.OrderedDict(
        f32=torch.randn(2, 3), f16=torch.randn(4).half(), bf16=torch.randn(3).bfloat16(),
        f64=torch.randn(2).double(), i64=torch.tensor([1, -2**40]),
        u8=torch.tensor([1, 200], dtype=torch.uint8), flags=torch.tensor([True, False]))
    ints = {2: torch.int16, 4: torch.int32, 8: torch.int64}

    def swapped(t):
        if t.element_size() == 1:
            return t.clone()
        raw = t.view(ints[t.element_size()]).numpy().byteswap()
        return torch.from_numpy(raw).view(t.dtype)

    path = str(tmp_path / "big.pth")
    with monkeypatch.context() as m:
        m.setattr(sys, "byteorder", "big")
        torch.save(collections.OrderedDict((k, swapped(v)) for k, v in sd.items()), path)
    assert_same(torch.load(path), sd)   # the file is right: torch swaps it back
    assert_same(pth.load(path), sd)


class RunsCode:
    """A pickle that, if unpickled with pickle's defaults, calls os.system."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("layout", ["zip", "legacy", "plain pickle"])
def test_a_malicious_pickle_runs_nothing(tmp_path, capsys, layout):
    marker = tmp_path / "ran"
    obj = {"x": RunsCode(str(marker)), "model": dump_state_dict("resnet8")}
    path = str(tmp_path / "evil.pth")
    if layout == "plain pickle":
        with open(path, "wb") as f:
            pickle.dump(obj, f, protocol=4)
    else:
        save(obj, path, layout)
    with pytest.raises(pth.UnsafePickleError, match=r"global posix\.system"):
        pth.load(path)
    assert convert_main(["--arch", "resnet8", "--num-classes", "100", path,
                         str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"kd_jax: error: {path}: it names the global "
                                               "posix.system") and "--allow-pickle" in err[0]
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_objects_a_pickle_can_name_are_immutable(tmp_path):
    """BUILD on an allowed global (here the tensor rebuilder, with a slot state replacing its
    function by `set`) fails and leaves the next load unchanged."""
    crafted = (b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n"   # GLOBAL
               b"}}X\x02\x00\x00\x00fncbuiltins\nset\ns\x86b.")   # ({}, {"fn": set}) BUILD
    path = tmp_path / "crafted.pth"
    path.write_bytes(crafted)
    with pytest.raises(pth.PthError, match="has no attribute .__dict__"):
        pth.load(str(path))
    for name, value in pth._ALLOWED.items():
        with pytest.raises((TypeError, AttributeError)):
            setattr(value, "fn", set)
    sd = geometry_state_dict()
    assert_same(pth.load(save(sd, tmp_path / "after.pth", "zip")), sd)


class ArrayAsStorage:
    """Pickles as _rebuild_tensor_v2 called on a numpy array instead of a file storage."""

    def __reduce__(self):
        return torch._utils._rebuild_tensor_v2, (np.arange(4.0), 0, (4,), (1,), False,
                                                 collections.OrderedDict())


def test_tensors_come_only_from_the_files_storages(tmp_path):
    """A pickle cannot hand the tensor rebuilder memory of its own making (the rebuilder
    reads with the strides it is given, so its storage must be one the reader made)."""
    path = tmp_path / "crafted.pth"
    path.write_bytes(pickle.dumps({"x": ArrayAsStorage()}, protocol=2))
    with pytest.raises(pth.PthError, match="a tensor's storage is a ndarray, not a storage"):
        pth.load(str(path))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_truncated_and_garbage_files(tmp_path, layout):
    data = open(save(dump_state_dict("resnet8"), tmp_path / "ok.pth", layout), "rb").read()
    for what, content in (("truncated", data[: len(data) * 2 // 3]), ("garbage", os.urandom(999))):
        bad = tmp_path / f"{what}.pth"
        bad.write_bytes(content)
        with pytest.raises(pth.PthError) as e:
            pth.load(str(bad))
        assert type(e.value) is pth.PthError, e.value   # corrupt, not refused or unsupported
        with pytest.raises(pth.PthError, match="expected a .pth file written by torch.save"):
            load_torch_file(str(bad))


def test_unsupported_constructs_need_torch(tmp_path, monkeypatch):
    """A sparse tensor: torch reads it (weights_only=True), and without torch the error says
    PyTorch is needed (MissingTorchError, an ImportError: the file is not at fault)."""
    path = str(tmp_path / "sparse.pth")
    sparse = torch.eye(3).to_sparse()
    torch.save({"x": sparse}, path)
    with pytest.raises(pth.UnsupportedPthError, match="_rebuild_sparse_tensor"):
        pth.load(path)
    with pytest.warns(UserWarning, match="read it with torch.load"):
        assert torch.equal(load_torch_file(path)["x"].to_dense(), torch.eye(3))
    monkeypatch.setitem(sys.modules, "torch", None)   # `import torch` fails from here on
    with pytest.raises(MissingTorchError, match="_rebuild_sparse_tensor.*needs PyTorch"):
        load_torch_file(path)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_converts_as_torch_float_does(tmp_path, dtype):
    """fp16/bf16 checkpoints: the Flax leaves equal torch's `.float()` of the tensors."""
    sd = collections.OrderedDict(
        (k, v.to(dtype) if v.is_floating_point() else v) for k, v in
        dump_state_dict("resnet8").items())
    path = save({"model": sd}, tmp_path / "half.pth", "zip")
    model = convert.load_torch_checkpoint(path, "resnet8", 100)
    np.testing.assert_array_equal(np.asarray(model.conv1.kernel[...]),
                                  sd["conv1.weight"].float().permute(2, 3, 1, 0).numpy())
    np.testing.assert_array_equal(np.asarray(model.bn1.var[...]),
                                  sd["bn1.running_var"].float().numpy())


# --- Writing: pth.save, checked by torch.load(weights_only=True) and by the reader ---

WRITABLE = [np.float32, np.float16, ml_dtypes.bfloat16, np.float64, np.int64, np.int32,
            np.int16, np.int8, np.uint8, np.bool_]
TORCH_DTYPES = {np.dtype(v): k for k, v in NUMPY_DTYPES.items()}


def random_bits(shape, dtype, rng) -> np.ndarray:
    """Random bytes as `dtype` (NaN payloads, infinities, -0 and subnormals included); bool as
    0/1, the only bytes a torch bool holds."""
    dtype = np.dtype(dtype)
    if dtype == np.bool_:
        return rng.integers(0, 2, shape).astype(np.bool_)
    n = int(np.prod(shape, dtype=np.int64))
    return rng.integers(0, 256, n * dtype.itemsize, dtype=np.uint8).view(dtype).reshape(shape)


def little_endian_bytes(array: np.ndarray) -> np.ndarray:
    return raw_bytes(array.astype(array.dtype.newbyteorder("<"), copy=False))


def assert_torch_holds(got: dict, want: dict[str, np.ndarray]):
    """torch.load's dict holds `want`'s arrays: keys in order, dtype, shape, bytes."""
    assert type(got) is dict and list(got) == list(want)
    for key, array in want.items():
        t = got[key]
        assert (t.dtype, tuple(t.shape)) == (TORCH_DTYPES[array.dtype.newbyteorder("=")],
                                             array.shape), key
        assert t.is_contiguous() and np.array_equal(raw_bytes(t), little_endian_bytes(array)), key


def assert_saved(sd: dict[str, np.ndarray], path) -> None:
    """pth.save(sd) reads back equal through torch.load(weights_only=True) and pth.load."""
    pth.save(sd, str(path))
    assert_torch_holds(torch.load(str(path), weights_only=True), sd)
    back = pth.load(str(path))
    assert list(back) == list(sd)
    for key, array in sd.items():
        assert back[key].dtype == array.dtype.newbyteorder("=") and back[key].shape == array.shape
        assert np.array_equal(little_endian_bytes(back[key]), little_endian_bytes(array)), key


def test_save_every_dtype_and_geometry_loads_in_torch_bit_for_bit(tmp_path):
    """Every writable dtype as 2-d, 0-d and empty arrays; a transposed view and big-endian
    input (written C-ordered, little-endian). The records are where torch's reader finds them
    (data at multiples of 64 bytes, as torch writes them; mmap=True reads there), and the same
    dict gives the same bytes."""
    rng = np.random.default_rng(0)
    sd = {}
    for dtype in WRITABLE:
        name = np.dtype(dtype).name
        sd[f"{name}.weight"] = random_bits((3, 5), dtype, rng)
        sd[f"{name}.scalar"] = random_bits((), dtype, rng)
        sd[f"{name}.empty"] = np.zeros((0, 4), dtype)
    sd["transposed"] = random_bits((4, 6), np.float32, rng).T
    sd["big_endian"] = random_bits((7,), np.float32, rng).astype(">f4")
    sd["big_endian_i64"] = np.array([1, -2**40, 2**62], ">i8")
    sd["num_batches_tracked"] = np.zeros((), np.int64)
    assert_saved(sd, tmp_path / "all.pth")
    assert_torch_holds(torch.load(str(tmp_path / "all.pth"), mmap=True), sd)
    reader = torch._C.PyTorchFileReader(str(tmp_path / "all.pth"))
    records = [r for r in reader.get_all_records() if r.startswith("data/")]
    assert len(records) == len(sd) and all(reader.get_record_offset(r) % 64 == 0 for r in records)
    assert reader.get_record("byteorder") == b"little"
    pth.save(sd, str(tmp_path / "again.pth"))
    assert (tmp_path / "again.pth").read_bytes() == (tmp_path / "all.pth").read_bytes()


@pytest.fixture(scope="module")
def random_pool() -> np.ndarray:
    """Random float32 values, more than the largest tensor of the zoo (2.4M)."""
    return np.random.default_rng(0).standard_normal(1 << 22, dtype=np.float32)


@pytest.mark.parametrize("name", DUMP_NAMES)
def test_save_every_zoo_state_dict_loads_in_torch(tmp_path, random_pool, name):
    """Each reference dump's keys, shapes and dtypes (those kd_jax.export writes: float32
    weights, int64 0-d num_batches_tracked); each tensor a different run of the random pool
    (views, so that the big ResNets cost no copies here)."""
    sd = {}
    for i, (key, shape, dtype) in enumerate(dump_entries(name)):
        n = int(np.prod(shape, dtype=np.int64))
        start = (i * 7919) % (random_pool.size - n)
        sd[key] = (random_pool[start: start + n].reshape(shape) if dtype == "float32" else
                   np.full(shape, i, np.dtype(dtype)))
    assert_saved(sd, tmp_path / f"{name}.pth")


def test_save_refuses_what_torch_cannot_hold(tmp_path):
    path = tmp_path / "x.pth"
    with pytest.raises(ValueError, match=r"^w: dtype uint16 has no torch storage type"):
        pth.save({"b": np.zeros(2, np.float32), "w": np.zeros(2, np.uint16)}, str(path))
    with pytest.raises(TypeError, match=r"^state dict key 3 is a int, not a str$"):
        pth.save({3: np.zeros(2, np.float32)}, str(path))
    assert not path.exists()
