"""CIFAR-10/100 from the original archives (kd_jax.data.cifar): both formats, archive or folder,
the cache, and the download (from a local HTTP server) with its md5 check.

The archives are written here, independently of the reader, in the published layouts: python
format = pickled {"data": uint8 (N, 3072) channel-major, "labels"/"fine_labels"}; binary =
records [label] or [coarse, fine] + 3072 bytes. Expected images come from the same random
(N, 32, 32, 3) arrays the archives were written from.
"""

import dataclasses
import functools
import hashlib
import http.server
import io
import os
import pickle
import tarfile
import threading

import numpy as np
import pytest

from kd_jax import data
from kd_jax.data import cifar, tfds_io

N_TRAIN_PER_FILE, N_TEST = 6, 5


def random_split(rng, n, num_classes):
    return (rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
            rng.integers(0, num_classes, n).astype(np.int32))


def chw_rows(images):
    """(N, 32, 32, 3) -> (N, 3072): all red, then green, then blue, each row-major."""
    return images.transpose(0, 3, 1, 2).reshape(len(images), -1)


def python_file(images, labels, label_key):
    body = {"batch_label": "testing", "data": chw_rows(images), label_key: labels.tolist()}
    if label_key == "fine_labels":
        body["coarse_labels"] = (labels // 5).tolist()
    return pickle.dumps(body, protocol=2)


def binary_file(images, labels, cifar100):
    head = ([labels // 5, labels] if cifar100 else [labels])
    return np.concatenate([np.stack(head, 1).astype(np.uint8), chw_rows(images)], 1).tobytes()


def make(name, fmt, directory, rng, as_folder=False):
    """Writes `name`'s archive (or extracted folder) in format fmt ("python" | "binary") into
    `directory`; returns (path, (train_images, train_labels), (test_images, test_labels))."""
    spec = cifar.SPECS[name]
    cifar100 = name == "cifar100"
    train_names = spec.python_train if fmt == "python" else spec.binary_train
    test_name = spec.python_test if fmt == "python" else spec.binary_test
    files, train = {}, ([], [])
    for f in train_names:
        images, labels = random_split(rng, N_TRAIN_PER_FILE, spec.num_classes)
        train[0].append(images)
        train[1].append(labels)
        files[f] = (python_file(images, labels, spec.label_key) if fmt == "python"
                    else binary_file(images, labels, cifar100))
    test = random_split(rng, N_TEST, spec.num_classes)
    files[test_name] = (python_file(*test, spec.label_key) if fmt == "python"
                        else binary_file(*test, cifar100))
    folder = spec.python_folder if fmt == "python" else spec.binary_folder
    archive = spec.python_archive if fmt == "python" else spec.binary_archive
    if as_folder:
        path = directory / folder
        path.mkdir(parents=True)
        for f, raw in files.items():
            (path / f).write_bytes(raw)
    else:
        path = directory / archive
        with tarfile.open(path, "w:gz") as tar:
            for f, raw in {"readme.html": b"<html/>", **files}.items():
                info = tarfile.TarInfo(f"{folder}/{f}")
                info.size = len(raw)
                tar.addfile(info, io.BytesIO(raw))
    return path, (np.concatenate(train[0]), np.concatenate(train[1])), test


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("KD_JAX_CACHE", str(cache))
    monkeypatch.setenv(tfds_io.OFFLINE_ENV, "1")
    return cache / "cifar"


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
@pytest.mark.parametrize("fmt", ["python", "binary"])
@pytest.mark.parametrize("as_folder", [False, True])
def test_reads_archives_and_folders(tmp_path, empty_cache, name, fmt, as_folder):
    rng = np.random.default_rng(len(name) + len(fmt) + as_folder)
    _, train, test = make(name, fmt, tmp_path, rng, as_folder)
    (got_train, got_test) = cifar.load(name, str(tmp_path))
    for got, want in ((got_train, train), (got_test, test)):
        assert got[0].dtype == np.uint8 and got[0].shape == want[0].shape
        assert got[1].dtype == np.int32
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])


def test_dataset_from_the_cache_with_limits(tmp_path, empty_cache):
    """data_dir unset: the cache; CIFAR-10 is a dataset name with 10 classes."""
    empty_cache.mkdir(parents=True)
    _, train, test = make("cifar10", "python", empty_cache, np.random.default_rng(0))
    ds = data.get_dataset({"name": "cifar10", "limit_train": 20, "limit_test": 4})
    assert ds.info == data.DatasetInfo("cifar10", 10, (32, 32, 3), 20, 4)
    batch = next(iter(ds.eval_batches(4)))
    np.testing.assert_array_equal(batch["label"], test[1][:4])
    mean = np.array([0.4914, 0.4822, 0.4465], np.float32)
    std = np.array([0.2470, 0.2435, 0.2616], np.float32)
    np.testing.assert_allclose(batch["image"], (test[0][:4] / 255.0 - mean) / std, atol=1e-5)


def test_python_format_preferred_over_binary(tmp_path, empty_cache):
    _, py_train, _ = make("cifar100", "python", tmp_path, np.random.default_rng(1))
    make("cifar100", "binary", tmp_path, np.random.default_rng(2))
    np.testing.assert_array_equal(cifar.load("cifar100", str(tmp_path))[0][0], py_train[0])


def test_offline_and_missing_is_one_clear_error(tmp_path, empty_cache):
    with pytest.raises(data.DataNotFoundError) as error:
        cifar.load("cifar100", str(tmp_path))
    message = str(error.value)
    assert f"cifar100 not found in {tmp_path}, {empty_cache} and" in message
    assert "downloads are off (KD_JAX_OFFLINE is set)" in message
    assert "cifar-100-python.tar.gz" in message and "cifar-100-binary.tar.gz" in message
    assert os.listdir(tmp_path) == [] and not empty_cache.exists()   # nothing created


def test_no_network_is_one_probe_and_no_download(tmp_path, empty_cache, monkeypatch,
                                                 no_network):
    monkeypatch.delenv(tfds_io.OFFLINE_ENV)
    for proxy in ("https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(proxy, raising=False)
    connects = no_network
    with pytest.raises(data.DataNotFoundError, match="www.cs.toronto.edu cannot be reached"):
        data.get_dataset({"name": "cifar10"})
    assert connects == [("www.cs.toronto.edu", 443)] and not empty_cache.exists()


def test_corrupt_archive_names_the_file(tmp_path, empty_cache):
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(b"not a tar file")
    with pytest.raises(data.DataNotFoundError, match="cifar-10-python.tar.gz: not a readable "
                                                     "cifar10 archive"):
        cifar.load("cifar10", str(tmp_path))


def test_pickle_that_runs_code_is_refused(tmp_path, empty_cache):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for f in (*cifar.SPECS["cifar10"].python_train, "test_batch"):
        (folder / f).write_bytes(pickle.dumps(os.system, protocol=2))   # posix.system
    with pytest.raises(data.DataNotFoundError, match="refusing to unpickle posix.system"):
        cifar.load("cifar10", str(tmp_path))


@pytest.fixture
def server(tmp_path):
    """An HTTP server on localhost serving tmp_path/served; yields its base URL."""
    served = tmp_path / "served"
    served.mkdir()
    handler = functools.partial(QuietHandler, directory=str(served))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield served, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def point_download_at(monkeypatch, url, md5):
    spec = cifar.SPECS["cifar10"]
    monkeypatch.setitem(cifar.SPECS, "cifar10", dataclasses.replace(spec, md5=md5))
    monkeypatch.setattr(type(spec), "url", property(lambda self: url))
    monkeypatch.setattr(tfds_io, "network_reachable", lambda *args, **kwargs: True)


def test_download_verifies_md5_then_caches(tmp_path, empty_cache, server, monkeypatch):
    served, base = server
    path, train, _ = make("cifar10", "python", served, np.random.default_rng(3))
    md5 = hashlib.md5(path.read_bytes()).hexdigest()
    point_download_at(monkeypatch, f"{base}/{path.name}", md5)
    got_train, _ = cifar.load("cifar10", None)
    np.testing.assert_array_equal(got_train[0], train[0])
    assert sorted(os.listdir(empty_cache)) == ["cifar-10-python.tar.gz"]
    # Cached: no second download (the server's file is gone).
    path.unlink()
    np.testing.assert_array_equal(cifar.load("cifar10", None)[0][1], train[1])


def test_download_into_data_dir_when_set(tmp_path, empty_cache, server, monkeypatch):
    served, base = server
    path, _, _ = make("cifar10", "python", served, np.random.default_rng(4))
    point_download_at(monkeypatch, f"{base}/{path.name}",
                      hashlib.md5(path.read_bytes()).hexdigest())
    target = tmp_path / "drive"
    target.mkdir()
    cifar.load("cifar10", str(target))
    assert os.listdir(target) == ["cifar-10-python.tar.gz"] and not empty_cache.exists()


def test_download_with_wrong_md5_keeps_nothing(tmp_path, empty_cache, server, monkeypatch):
    served, base = server
    path, _, _ = make("cifar10", "python", served, np.random.default_rng(5))
    point_download_at(monkeypatch, f"{base}/{path.name}", "0" * 32)
    with pytest.raises(data.DataNotFoundError, match="differs from the published 0{32}"):
        cifar.load("cifar10", None)
    assert os.listdir(empty_cache) == []


def test_download_http_error_is_one_clear_error(tmp_path, empty_cache, server, monkeypatch):
    _, base = server
    point_download_at(monkeypatch, f"{base}/missing.tar.gz", "0" * 32)
    with pytest.raises(data.DataNotFoundError, match=r"downloading .*/missing.tar.gz to .* "
                                                     r"failed \(HTTPError"):
        cifar.load("cifar10", None)
    assert os.listdir(empty_cache) == []


def test_download_keeps_a_verified_file_and_writes_its_own_part(tmp_path, server, monkeypatch):
    """A file already at the target with the published md5 is used as it is (no request); a
    download writes to a part file of its own (host and pid in its name), so that another
    process's part file (here a stale one) is neither used nor touched."""
    from kd_jax.data import download
    served, base = server
    path, _, _ = make("cifar10", "python", served, np.random.default_rng(6))
    md5 = hashlib.md5(path.read_bytes()).hexdigest()
    target = tmp_path / "cache" / path.name
    target.parent.mkdir()
    part = download.part_path(str(target))
    assert part.endswith(f"-{os.getpid()}") and part.startswith(f"{target}.part-")
    other = tmp_path / "cache" / f"{path.name}.part-otherhost-1"
    other.write_bytes(b"half an archive")
    assert download.download(f"{base}/{path.name}", str(target), md5) == str(target)
    assert target.read_bytes() == path.read_bytes() and other.read_bytes() == b"half an archive"
    path.unlink()   # the server has it no more: a second download would fail
    assert download.download(f"{base}/{path.name}", str(target), md5) == str(target)


def test_part_files_of_killed_downloads_are_removed(tmp_path):
    """Before a download, this host's part files of processes that are gone (killed while
    downloading) are removed; those of live processes and of other hosts are left."""
    import socket
    import subprocess
    import sys

    from kd_jax.data import download
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    host = socket.gethostname()
    names = [f"{host}-{gone}", f"{host}-{os.getpid()}", f"otherhost-{gone}", f"{host}-x"]
    for name in names:
        (tmp_path / f"a.tar.gz.part-{name}").write_bytes(b"half an archive")
    download.remove_stale_parts(str(tmp_path / "a.tar.gz"))
    assert sorted(os.listdir(tmp_path)) == sorted(f"a.tar.gz.part-{n}" for n in names[1:])
