"""Data preparation in a multi-process run (kd_jax.data.processes): one process downloads or
prepares, the others wait, then open what it left.

- Three jax.distributed CPU processes train on CIFAR-10 that none of them has: the archive
  (written by tests/test_data_cifar.py's `make`) is served by a 127.0.0.1 HTTP server that
  counts requests; exactly one request reaches it, and all three processes train.
- Three processes open imagenet2012 through a stub tfds builder (a stand-in module for
  tensorflow_datasets whose download_and_prepare logs the process that runs it): one
  preparation, by process 0. Its tf.data pipeline needs TensorFlow (the lean CI legs have
  none: skipped there with the reason).
- In one process, with a fake key-value client: the order (process 0, then each other host's
  first process, then the rest), and process 0's error raised by the processes waiting for it.
"""

import functools
import hashlib
import http.server
import itertools
import json
import os
import sys
import textwrap
import threading

import numpy as np
import pytest

from kd_jax.data import processes
from kd_jax.data.base import DataNotFoundError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))
import test_data_cifar  # noqa: E402  (the archive writer)
import test_train_multihost as multihost  # noqa: E402  (the process launcher)

PROCESSES = 3

SCRIPT = textwrap.dedent("""
    import contextlib, dataclasses, json, os, sys, time, types
    import jax
    jax.config.update("jax_disable_most_optimizations", True)  # as tests/conftest.py
    import kd_jax.testing  # noqa: F401  registers tiny_cnn / tiny_cnn_wide
    from kd_jax import data, main, recipes
    from kd_jax.data import cifar, tfds_io

    workdir, total_steps, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    url, md5, tfds_dir = (os.environ[k] for k in ("TEST_URL", "TEST_MD5", "TEST_TFDS_DIR"))
    result = {}
    # CIFAR-10 comes from the local server (its md5 is the served archive's).
    spec = cifar.SPECS["cifar10"]
    cifar.SPECS["cifar10"] = dataclasses.replace(spec, md5=md5)
    type(spec).url = property(lambda self: url)
    tfds_io.network_reachable = lambda *args, **kwargs: True

    c = recipes.build_config("sdd", data.CIFAR100, None, default_pair="resnet32x4-ShuffleV1")
    c.dataset.update(name="cifar10", num_classes=10)
    c.student.arch, c.teacher.arch, c.teacher.checkpoint = "tiny_cnn", "tiny_cnn_wide", "random"
    c.batch_size, c.num_epochs, c.total_steps = 6, 1, total_steps
    c.log_every_steps, c.tensorboard, c.progress_bar, c.export_model = 1, False, False, False
    c.multihost = True
    if mode == "cifar":
        result["steps"] = main.run(c, workdir)["steps"]   # initializes jax.distributed
    else:
        from kd_jax.train import multihost
        multihost.initialize()

    # imagenet2012 through a stub tensorflow_datasets: preparing takes a second, and logs
    # which process ran it.
    class StubBuilder:
        info = types.SimpleNamespace(splits={"train": types.SimpleNamespace(num_examples=6),
                                             "validation": types.SimpleNamespace(num_examples=3)})

        def is_prepared(self):
            return os.path.exists(os.path.join(tfds_dir, "prepared"))

        def download_and_prepare(self, download_config=None):
            with open(os.path.join(tfds_dir, "prepare.log"), "a") as fh:
                fh.write(f"{jax.process_index()}\\n")
            time.sleep(1)
            open(os.path.join(tfds_dir, "prepared"), "w").close()

    stub = types.ModuleType("tensorflow_datasets")
    stub.builder = lambda name, data_dir=None: StubBuilder()
    stub.disable_progress_bar = lambda: None
    stub.download = types.SimpleNamespace(DownloadConfig=lambda **kwargs: kwargs)
    sys.modules["tensorflow_datasets"] = stub
    tfds_io.hide_accelerators_from_tensorflow = lambda: None
    tfds_io.bounded_download_retries = contextlib.nullcontext
    if mode == "tfds":
        ds = data.get_dataset({"name": "imagenet2012", "data_dir": tfds_dir},
                              process_index=jax.process_index(),
                              process_count=jax.process_count())
        result["imagenet_train"] = ds.info.num_train
    print("RESULT " + json.dumps({
        "process": jax.process_index(), "processes": jax.process_count(), **result}), flush=True)
""")


class CountingHandler(http.server.SimpleHTTPRequestHandler):
    """Serves a folder; appends each GET's path to the server's `requests`."""

    def do_GET(self):
        self.server.requests.append(self.path)
        super().do_GET()

    def log_message(self, *args):
        pass


def run_three_processes(tmp_path, monkeypatch, mode: str):
    """Runs SCRIPT in 3 processes ("cifar": train on CIFAR-10 served once; "tfds": open
    imagenet2012 through the stub builder). Returns (results, the requests the server saw,
    the archive's name, the cache, the tfds directory)."""
    served = tmp_path / "served"
    served.mkdir()
    archive, _, _ = test_data_cifar.make("cifar10", "python", served, np.random.default_rng(0))
    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(CountingHandler, directory=str(served)))
    httpd.requests = []
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    tfds_dir = tmp_path / "imagenet"
    tfds_dir.mkdir()
    for name in ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar"):   # the manual files
        (tfds_dir / name).write_bytes(b"")
    cache = tmp_path / "cache"
    monkeypatch.setenv("KD_JAX_CACHE", str(cache))
    monkeypatch.delenv("KD_JAX_OFFLINE", raising=False)
    monkeypatch.setenv("TEST_URL", f"http://127.0.0.1:{httpd.server_address[1]}/{archive.name}")
    monkeypatch.setenv("TEST_MD5", hashlib.md5(archive.read_bytes()).hexdigest())
    monkeypatch.setenv("TEST_TFDS_DIR", str(tfds_dir))
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    port = multihost.free_port()
    try:
        results = multihost.finish([
            multihost.start(script, tmp_path / "run", 1, mode, process=i, port=port,
                            processes=PROCESSES) for i in range(PROCESSES)])
    finally:
        httpd.shutdown()
    assert sorted(r["process"] for r in results) == list(range(PROCESSES))
    assert all(r["processes"] == PROCESSES for r in results)
    return results, httpd.requests, archive.name, cache, tfds_dir


@pytest.mark.slow
def test_three_processes_download_once_and_train(tmp_path, monkeypatch):
    results, requests, archive, cache, _ = run_three_processes(tmp_path, monkeypatch, "cifar")
    assert requests == [f"/{archive}"]
    assert all(r["steps"] == 1 for r in results)
    assert os.listdir(cache / "cifar") == [archive]        # no part file left


@pytest.mark.slow
@pytest.mark.needs("tensorflow")
def test_three_processes_prepare_a_tfds_dataset_once(tmp_path, monkeypatch):
    results, _, _, _, tfds_dir = run_three_processes(tmp_path, monkeypatch, "tfds")
    assert (tfds_dir / "prepare.log").read_text() == "0\n"
    assert all(r["imagenet_train"] == 6 for r in results)


# --- the order and the errors, in one process -------------------------------------------------

class FakeClient:
    """jax.distributed's key-value client over a dict. Every process's hostname is set up
    front (as the barrier of the real exchange guarantees); a key not set yet is a timeout."""

    def __init__(self, hosts):
        self.store = {f"kd_jax/data/0/host/{i}": h for i, h in enumerate(hosts)}
        self.waits = []

    def key_value_set(self, key, value):
        self.store[key] = value

    def wait_at_barrier(self, name, timeout_in_ms):
        pass

    def key_value_dir_get(self, prefix):
        return [(k, v) for k, v in self.store.items() if k.startswith(prefix)]

    def blocking_key_value_get(self, key, timeout_in_ms):
        self.waits.append(key)
        if key not in self.store:
            raise RuntimeError(f"DEADLINE_EXCEEDED: {key}")
        return self.store[key]


@pytest.fixture
def simulated(monkeypatch):
    """(client, run(process, load)): processes 0, 1 on host a, 2, 3 on host b, run one after
    another in this process."""
    hosts = ["a", "a", "b", "b"]
    client = FakeClient(hosts)
    monkeypatch.setattr(processes, "_calls", itertools.repeat(0))   # each process's 1st call

    def run(process, load):
        monkeypatch.setattr(processes.socket, "gethostname", lambda: hosts[process])
        return processes.leader_first("cifar100", load, process_index=process,
                                      process_count=len(hosts), client=client)
    return client, run


def test_process_zero_first_then_each_host_first_then_the_rest(simulated):
    client, run = simulated
    order = []
    for process in (0, 2, 1, 3):   # an order the waits allow; each waits for its predecessor
        client.waits.clear()
        assert run(process, lambda: order.append(process) or process) == process
        assert client.waits == {0: [], 1: ["kd_jax/data/0/done/0"],
                                2: ["kd_jax/data/0/done/0"],
                                3: ["kd_jax/data/0/done/2"]}[process], process
    assert order == [0, 2, 1, 3]
    assert {k: v for k, v in client.store.items() if "/done/" in k} == {
        "kd_jax/data/0/done/0": "ok", "kd_jax/data/0/done/2": "ok"}


def test_the_error_of_process_zero_stops_the_others(simulated):
    _, run = simulated

    def missing():
        raise DataNotFoundError("cifar100 not found in /data and\n the host cannot be reached")

    with pytest.raises(DataNotFoundError, match="cannot be reached"):
        run(0, missing)
    loads = []
    for process in (2, 1, 3):      # none of them loads; each raises process 0's error
        with pytest.raises(DataNotFoundError) as error:
            run(process, lambda: loads.append(process))
        assert "cifar100 not found in /data and the host cannot be reached" in str(error.value)
        assert "(process 0, which prepares cifar100" in str(error.value)
        assert "\n" not in str(error.value)
    assert loads == []


def test_a_full_disk_at_process_zero_is_the_same_line_in_every_process(simulated):
    """Process 0's download hits a full disk: each process ends with the same one line, the
    part file and the cause (kd_jax.errors reads the errno and path from the relayed text)."""
    import errno

    from kd_jax import errors
    _, run = simulated
    part = "/data/cifar-100-python.tar.gz.part-a-7"

    def full():   # as kd_jax.data.download raises it
        try:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), part)
        except OSError as e:
            raise DataNotFoundError(f"downloading http://x/c.tar.gz to /data/c.tar.gz failed "
                                    f"({type(e).__name__}: {e})") from e

    lines = []
    for process, load in ((0, full), (2, None), (1, None), (3, None)):
        with pytest.raises(DataNotFoundError) as error:
            run(process, load)
        lines.append(errors.message(error.value))
    assert lines == [f"{part}: No space left on device (disk full); free space on the disk of "
                     "/data, then run the same command again"] * 4, lines


def test_a_predecessor_that_never_answers_is_one_clear_error(simulated, monkeypatch, capsys):
    monkeypatch.setattr(processes, "WAIT_S", 7200)
    _, run = simulated
    with pytest.raises(DataNotFoundError, match=r"process 1 waited 2 h for process 0 to "
                                                r"download or prepare cifar100, in vain"):
        run(1, lambda: None)
    assert "kd_jax: process 1 waits for process 0" in capsys.readouterr().err


def test_one_process_loads_at_once():
    assert processes.leader_first("x", lambda: 5, process_index=0, process_count=1) == 5
    assert processes.local_process_count(process_index=0, process_count=1) == 1
