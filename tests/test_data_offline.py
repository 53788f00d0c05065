"""A missing tfds dataset without a network: no download attempt, a message with the fix, and
nothing left behind (kd_jax.data.tfds_io's checks before tfds is called).

HOME and TFDS_DATA_DIR point at temporary directories; the network is simulated by patching
socket.create_connection, so these tests behave the same with or without one."""

import os
import socket
import threading

import pytest

from kd_jax import data
from kd_jax.data import tfds_io


@pytest.fixture
def offline(tmp_path, monkeypatch, no_network):
    """No network, an empty home, and tfds entry points that fail the test if called."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for name in ("TFDS_DATA_DIR", tfds_io.OFFLINE_ENV, "https_proxy", "HTTPS_PROXY",
                 "http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)

    def no_tfds(*args, **kwargs):
        raise AssertionError("tfds was called although the data cannot be there")

    import tensorflow_datasets as tfds
    monkeypatch.setattr(tfds, "builder", no_tfds)
    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", no_tfds)
    return home, no_network


@pytest.mark.needs("tensorflow")  # kd_jax names the [tf] extra before the offline checks
def test_cub_offline_raises_without_download(offline, tmp_path):
    home, connects = offline
    with pytest.raises(data.DataNotFoundError) as error:
        data.get_dataset({"name": "caltech_birds2011", "data_dir": None})
    message = str(error.value)
    assert connects == [("data.caltech.edu", 443)]   # one probe, no download
    assert f"not prepared in {home}/tensorflow_datasets" in message
    assert "data.caltech.edu cannot be reached (no network?)" in message
    assert "CUB_200_2011.tgz" in message
    assert os.listdir(home) == []   # no ~/tensorflow_datasets/caltech_birds2011, no downloads/


@pytest.mark.needs("tensorflow")  # kd_jax names the [tf] extra before the offline checks
def test_kd_jax_offline_skips_even_the_probe(offline, monkeypatch, tmp_path):
    _, connects = offline
    monkeypatch.setenv(tfds_io.OFFLINE_ENV, "1")
    data_dir = tmp_path / "tfds"
    data_dir.mkdir()
    with pytest.raises(data.DataNotFoundError, match="downloads are off"):
        data.get_dataset({"name": "caltech_birds2011", "data_dir": str(data_dir)})
    assert connects == [] and os.listdir(data_dir) == []


@pytest.mark.needs("tensorflow")  # kd_jax names the [tf] extra before the offline checks
def test_imagenet_needs_its_manual_files_and_no_network(offline, tmp_path):
    _, connects = offline
    with pytest.raises(data.DataNotFoundError, match=r"ILSVRC2012_img_train\.tar and "
                                                     r"ILSVRC2012_img_val\.tar are not in"):
        data.get_dataset({"name": "imagenet2012", "data_dir": str(tmp_path)})
    assert connects == []


def test_data_dir_must_exist(tmp_path):
    for name in ("cifar10", "cifar100", "imagenet2012", "caltech_birds2011", "fashion_mnist"):
        with pytest.raises(data.DataNotFoundError, match="dataset.data_dir=.*: no such directory"):
            data.get_dataset({"name": name, "data_dir": str(tmp_path / "missing")})


def test_prepared_or_placed_data_goes_to_tfds(tmp_path):
    """What counts as data on disk: a prepared version, the manual files, a finished download
    (not a .tmp. one)."""
    root = str(tmp_path)
    assert not tfds_io.prepared_on_disk(root, "cifar100")
    version = tmp_path / "cifar100" / "3.0.2"
    version.mkdir(parents=True)
    assert not tfds_io.prepared_on_disk(root, "cifar100")   # an empty leftover folder
    (version / "dataset_info.json").write_text("{}")
    assert tfds_io.prepared_on_disk(root, "cifar100")

    source, manual = tfds_io.SOURCES["caltech_birds2011"], tmp_path / "manual"
    manual.mkdir()
    (manual / "segmentations.tgz").write_text("")
    assert not tfds_io._has_local_files(source, root, str(manual))
    downloads = tmp_path / "downloads" / "caltech_birds2011"
    downloads.mkdir(parents=True)
    (downloads / "data.caltech.edu_CUB_200_2011zK0.tgz.tmp.0a1b").write_text("")
    assert not tfds_io._has_local_files(source, root, str(manual))
    (manual / "CUB_200_2011.tgz").write_text("")
    assert tfds_io._has_local_files(source, root, str(manual))


def test_failed_download_removes_what_it_created(tmp_path):
    root = tmp_path / "tfds"
    (root / "other_dataset" / "1.0.0").mkdir(parents=True)
    (root / "other_dataset" / "1.0.0" / "dataset_info.json").write_text("{}")
    with pytest.raises(RuntimeError):
        with tfds_io._removed_on_failure(str(root), "cifar100"):
            (root / "cifar100" / "3.0.2.incomplete").mkdir(parents=True)
            (root / "cifar100" / "3.0.2.incomplete" / "part").write_text("x")
            (root / "downloads" / "cifar100").mkdir(parents=True)
            (root / "downloads" / "cifar100" / "file.tar.gz.tmp.0a1b").write_text("partial")
            (root / "downloads" / "extracted").mkdir()
            (root / "downloads" / "finished.tar.gz").write_text("kept: tfds reuses it")
            raise RuntimeError("connection reset")
    assert sorted(os.listdir(root)) == ["downloads", "other_dataset"]
    assert os.listdir(root / "downloads") == ["finished.tar.gz"]
    assert os.path.exists(root / "other_dataset" / "1.0.0" / "dataset_info.json")


def test_network_probe(monkeypatch):
    for name in (tfds_io.OFFLINE_ENV, "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    port = server.getsockname()[1]
    accept = threading.Thread(target=lambda: [server.accept() for _ in range(2)], daemon=True)
    accept.start()
    try:
        assert tfds_io.network_reachable("127.0.0.1", port, timeout=2)
        # Through a proxy: the proxy is probed, not the (unresolvable) host.
        monkeypatch.setenv("https_proxy", f"http://127.0.0.1:{port}")
        assert tfds_io.network_reachable("no-such-host.invalid", 443, timeout=2)
        monkeypatch.setenv(tfds_io.OFFLINE_ENV, "1")
        assert not tfds_io.network_reachable("127.0.0.1", port, timeout=2)
    finally:
        # A probe returns once the handshake is done, maybe before the thread's accept(); a
        # socket closed while a thread blocks in accept() still listens (Linux): join first.
        accept.join(timeout=10)
        server.close()
    monkeypatch.delenv(tfds_io.OFFLINE_ENV)
    monkeypatch.delenv("https_proxy")
    assert not tfds_io.network_reachable("127.0.0.1", port, timeout=2)   # closed port


@pytest.mark.parametrize("name", ["imagenet2012", "caltech_birds2011"])
def test_tf_datasets_without_tensorflow_name_the_extra(tmp_path, monkeypatch, name):
    """The core install has no TensorFlow: its datasets fail with one error naming [tf]."""
    import importlib.util
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda mod, *a: None if mod == "tensorflow" else find_spec(mod, *a))
    with pytest.raises(data.DataNotFoundError, match=r"needs TensorFlow, which the core kd_jax "
                                                     r"install leaves out: pip install "
                                                     r"'kd_jax\[tf\]'"):
        data.get_dataset({"name": name, "data_dir": str(tmp_path)})
