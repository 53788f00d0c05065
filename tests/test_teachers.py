"""python -m kd_jax.teachers: fetch from a file and over HTTP, resume, verification, errors.

Archives are built here with the published layout (`cifar_teachers/<arch>_vanilla/
ckpt_epoch_240.pth`: {"model": state_dict, "accuracy", "epoch"}) from the torch models of
tests/torch_models.py with random weights. The HTTP server is http.server on 127.0.0.1 only,
with a per-request socket timeout; the published URLs themselves cannot be reached from the
test machines, so the code path with the real URLs is exercised only up to the URL (the
offline error), with the catalog's URLs replaced by unreachable local ones.

Oracles: hashlib for the recorded sha256, the torch model's own logits and accuracy for the
converted and measured teacher.
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import json
import os
import socket
import sys
import tarfile
import threading

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="needs torch: the teachers are PyTorch checkpoints")

import torch_models  # noqa: E402  (tests/torch_models.py)
from kd_jax import convert, teachers  # noqa: E402
from kd_jax.teachers import __main__ as teachers_cli  # noqa: E402
from kd_jax.teachers import catalog, fetch  # noqa: E402

ARCH = "resnet56"          # the smallest published CIFAR-100 teacher
PUBLISHED = 72.34          # its published top-1 (DKD/SDD tables, RepDistiller README)


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("KD_JAX_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("KD_JAX_TEACHERS", raising=False)


def torch_teacher(seed: int = 0):
    return torch_models.randomize_(torch_models.create(ARCH, 100), seed)


def make_tar(path, accuracy: float = 72.3, seed: int = 0) -> str:
    """A cifar_teachers.tar with the published layout holding ARCH."""
    src = os.path.join(os.path.dirname(path), f"src{seed}_{accuracy}")
    member = os.path.join(src, "cifar_teachers", f"{ARCH}_vanilla")
    os.makedirs(member)
    torch.save({"model": torch_teacher(seed).state_dict(), "epoch": 240,
                "accuracy": torch.tensor(accuracy)},   # RepDistiller stores a tensor
               os.path.join(member, "ckpt_epoch_240.pth"))
    with tarfile.open(path, "w") as tar:
        tar.add(os.path.join(src, "cifar_teachers"), arcname="cifar_teachers")
    return str(path)


def sha(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def installed(name: str = ARCH) -> str:
    return os.path.join(teachers.teachers_dir(), name)


def run(capsys, *argv) -> tuple[int, str, str]:
    rc = teachers_cli.main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


def assert_same_logits(path: str, seed: int = 0):
    model = convert.load_teacher(path, ARCH, 100)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(7))
    expected = torch_teacher(seed)(x)[0].detach().numpy()
    torch_models.assert_close(torch_models.forward(model, torch_models.nhwc(x))[0], expected,
                              "logits")


# --- a local HTTP server -----------------------------------------------------------------------

class Server:
    """Serves `files` ({name: bytes}) on 127.0.0.1 with Range support; `drop_first_at`: the
    first full request declares the whole length and closes after that many bytes."""

    def __init__(self, files: dict, drop_first_at: int | None = None):
        self.files, self.drop_first_at, self.requests = files, drop_first_at, []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            timeout = 10   # seconds per socket operation: a stuck client cannot hang the test

            def do_GET(self):
                name = self.path.lstrip("/")
                server.requests.append((name, self.headers.get("Range")))
                if name not in server.files:
                    self.send_error(404)
                    return
                body = server.files[name]
                start = 0
                if self.headers.get("Range"):
                    start = int(self.headers["Range"].split("=")[1].split("-")[0])
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                if server.drop_first_at is not None and not start:
                    cut, server.drop_first_at = server.drop_first_at, None
                    self.wfile.write(body[:cut])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.wfile.write(body[start:])

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/{name}"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)


def closed_port_url(name: str) -> str:
    with socket.socket() as s:   # a port nobody listens on: connection refused at once
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}/{name}"


# --- from a file -------------------------------------------------------------------------------

def test_fetch_from_file_converts_verifies_and_records_the_sha256(tmp_path, capsys):
    tar = make_tar(tmp_path / "cifar_teachers.tar")
    rc, out, err = run(capsys, "fetch", ARCH, "--from", tar)
    assert rc == 0, err
    assert "recorded top-1 72.30%" in out and "installed" in out
    meta = json.load(open(os.path.join(installed(), "teacher.json")))
    assert meta["archive_sha256"] == sha(tar)
    assert meta["member"] == f"cifar_teachers/{ARCH}_vanilla/ckpt_epoch_240.pth"
    assert (meta["accuracy"], meta["epoch"], meta["published_top1"]) == (72.3, 240, PUBLISHED)
    assert_same_logits(installed())
    # `path` prints the directory that teacher.checkpoint=published resolves to.
    rc, out, _ = run(capsys, "path", ARCH)
    assert rc == 0 and out.strip() == installed() == teachers.published_path(ARCH)
    # A second fetch of the same bytes changes nothing.
    rc, out, _ = run(capsys, "fetch", ARCH, "--from", tar)
    assert rc == 0 and "from identical bytes" in out


def test_fetch_from_a_single_pth(tmp_path, capsys):
    pth = str(tmp_path / "ckpt_epoch_240.pth")
    torch.save({"model": torch_teacher().state_dict(), "best_acc": 72.4}, pth)
    rc, out, err = run(capsys, "--dir", str(tmp_path / "mine"), "fetch", ARCH, "--from", pth)
    assert rc == 0, err
    assert_same_logits(str(tmp_path / "mine" / ARCH))
    # --dir also after the sub-command; a missing teacher names the command with that --dir.
    assert run(capsys, "path", ARCH, "--dir", str(tmp_path / "mine"))[1].strip() == str(
        tmp_path / "mine" / ARCH)
    rc, _, err = run(capsys, "path", ARCH, "--dir", str(tmp_path / "other"))
    assert rc == 1 and (f"fetch it with `python -m kd_jax.teachers --dir {tmp_path / 'other'} "
                        f"fetch {ARCH}`") in err
    rc, _, err = run(capsys, "fetch", ARCH, "resnet110", "--from", pth)
    assert rc == 2 and "single checkpoint: name exactly one teacher" in err


def test_mismatching_accuracy_is_not_installed(tmp_path, capsys):
    tar = make_tar(tmp_path / "cifar_teachers.tar", accuracy=60.0)
    rc, _, err = run(capsys, "fetch", ARCH, "--from", tar)
    assert rc == 1
    assert (f"top-1 recorded in the checkpoint 60.00% differs from the published "
            f"{PUBLISHED:.2f}% by more than 0.5 points") in err
    assert not os.path.exists(installed())
    root = teachers.teachers_dir()
    assert not os.path.isdir(root) or os.listdir(root) == []   # no staging directory left
    rc, _, err = run(capsys, "fetch", ARCH, "--from", tar, "--tolerance", "13")
    assert rc == 0, err


@pytest.mark.parametrize("kind", ["garbage", "truncated"])
def test_corrupt_archive_from_file(tmp_path, capsys, kind):
    tar = make_tar(tmp_path / "good.tar")
    bad = tmp_path / "cifar_teachers.tar"
    data = open(tar, "rb").read()
    bad.write_bytes(os.urandom(4096) if kind == "garbage" else data[: len(data) // 2])
    rc, _, err = run(capsys, "fetch", ARCH, "--from", str(bad))
    assert rc == 1 and "is not a readable tar archive" in err and "corrupt or truncated" in err
    assert not os.path.exists(installed())


def test_different_bytes_later_are_reported(tmp_path, capsys):
    first, second = make_tar(tmp_path / "a.tar", seed=0), make_tar(tmp_path / "b.tar", seed=1)
    assert run(capsys, "fetch", ARCH, "--from", first)[0] == 0
    rc, _, err = run(capsys, "fetch", ARCH, "--from", second)
    assert rc == 1
    assert f"has sha256 {sha(second)}, but the first download" in err and sha(first) in err
    assert_same_logits(installed(), seed=0)   # the installed teacher is untouched
    rc, out, _ = run(capsys, "fetch", ARCH, "--from", second, "--force")
    assert rc == 0 and "warning:" in out
    meta = convert.read_meta(installed())
    assert (meta["archive_sha256"], meta["replaced_archive_sha256"]) == (sha(second), sha(first))
    assert_same_logits(installed(), seed=1)


# --- over HTTP ---------------------------------------------------------------------------------

def test_download_resumes_a_dropped_connection_and_a_partial_file(tmp_path, capsys):
    body = open(make_tar(tmp_path / "cifar_teachers.tar"), "rb").read()
    cut = len(body) // 3
    with Server({"cifar_teachers.tar": body}, drop_first_at=cut) as server:
        rc, out, err = run(capsys, "fetch", ARCH, "--url", server.url("cifar_teachers.tar"))
    assert rc == 0, err
    assert server.requests == [("cifar_teachers.tar", None),
                               ("cifar_teachers.tar", f"bytes={cut}-")]
    cached = os.path.join(fetch.downloads_dir(), "cifar_teachers.tar")
    assert sha(cached) == hashlib.sha256(body).hexdigest() == convert.read_meta(
        installed())["archive_sha256"]
    assert_same_logits(installed())

    # A partial file left by a killed download: the next command asks for the rest only.
    os.remove(cached)
    with open(cached + ".part", "wb") as f:
        f.write(body[:1000])
    with Server({"cifar_teachers.tar": body}) as server:
        rc, out, err = run(capsys, "fetch", ARCH, "--force", "--url",
                           server.url("cifar_teachers.tar"))
    assert rc == 0, err
    assert "resuming" in out and server.requests == [("cifar_teachers.tar", "bytes=1000-")]
    assert sha(cached) == hashlib.sha256(body).hexdigest()


def test_a_corrupt_download_is_removed_from_the_cache(tmp_path, capsys):
    with Server({"cifar_teachers.tar": os.urandom(10000)}) as server:
        rc, _, err = run(capsys, "fetch", ARCH, "--url", server.url("cifar_teachers.tar"))
    assert rc == 1 and "is not a readable tar archive" in err and "Removed it from the cache" in err
    assert not os.path.exists(os.path.join(fetch.downloads_dir(), "cifar_teachers.tar"))


def test_offline_error_names_the_urls_and_the_from_option(capsys, monkeypatch):
    """The catalog's URLs (unreachable here) replaced by refused local ones: one error line."""
    archive_url = closed_port_url("cifar_teachers.tar")
    fallback = closed_port_url("{arch}_vanilla/ckpt_epoch_240.pth")
    monkeypatch.setitem(catalog.TEACHERS, ARCH,
                        dataclasses.replace(catalog.TEACHERS[ARCH], urls=(archive_url,)))
    monkeypatch.setattr(catalog, "REPDISTILLER_TEACHER_URL", fallback)
    rc, _, err = run(capsys, "fetch", ARCH)
    assert rc == 1
    line = err.splitlines()[0]
    assert line.startswith(f"error: {ARCH}: could not download ({archive_url}: ")
    assert fallback.format(arch=ARCH) in line
    assert f"download {archive_url} on a machine with network access and run " \
           f"`python -m kd_jax.teachers fetch {ARCH} --from FILE`" in line


def test_catalog_records_the_published_sources():
    assert catalog.MDISTILLER_CIFAR_TEACHERS_URL == (
        "https://github.com/megvii-research/mdistiller/releases/download/checkpoints/"
        "cifar_teachers.tar")
    published = {"resnet32x4": 79.42, "resnet56": 72.34, "resnet110": 74.31, "wrn_40_2": 75.61,
                 "vgg13": 74.64, "ResNet50": 79.34}   # the list (CIFAR-100)
    assert {n: t.published_top1 for n, t in catalog.TEACHERS.items()
            if t.dataset == "cifar100"} == published
    assert catalog.TEACHERS["imagenet_ResNet34"].urls == (
        "https://download.pytorch.org/models/resnet34-333f7ec4.pth",)


def test_torchvision_file_must_match_the_hash_in_its_name(tmp_path, capsys):
    pth = str(tmp_path / "resnet34.pth")
    torch.save({"fc.weight": torch.zeros(2, 2)}, pth)
    rc, _, err = run(capsys, "fetch", "imagenet_ResNet34", "--from", pth)
    assert rc == 1
    assert (f"{pth}: sha256 {sha(pth)}, but the published resnet34-333f7ec4.pth has sha256 "
            "333f7ec4c6338da2cbed37f1fc0445f9624f1355633fa1d7eab79a91084c6cef. Nothing "
            "installed") in err


# --- measured accuracy -------------------------------------------------------------------------

def test_measured_accuracy_is_checked_and_recorded(tmp_path, capsys, monkeypatch):
    """The test split (here synthetic, 100 classes) measured by kd_jax.evaluate equals the
    torch teacher's own accuracy on the same normalised images; a random teacher fails the
    published 72.34 unless the tolerance allows it."""
    from kd_jax import data, evaluate
    ds = data.get_dataset(evaluate.dataset_config("synthetic", 100, num_test=300))
    monkeypatch.setattr(teachers_cli, "test_set", lambda teacher, data_dir: ds)
    images = np.concatenate([b["image"][b["mask"] > 0] for b in ds.eval_batches(128)])
    labels = np.concatenate([b["label"][b["mask"] > 0] for b in ds.eval_batches(128)])
    with torch.no_grad():
        logits = torch_teacher()(torch.from_numpy(images.transpose(0, 3, 1, 2)))[0]
    expected = 100.0 * float((logits.argmax(1).numpy() == labels).mean())
    tar = make_tar(tmp_path / "cifar_teachers.tar")
    rc, _, err = run(capsys, "fetch", ARCH, "--from", tar)
    assert rc == 1 and f"top-1 measured {expected:.2f}% differs from the published" in err
    rc, out, err = run(capsys, "fetch", ARCH, "--from", tar, "--tolerance", "100")
    assert rc == 0, err
    assert convert.read_meta(installed())["measured"]["top1"] == pytest.approx(expected, abs=1e-9)


def test_the_same_pth_from_another_file_is_not_a_change(tmp_path, capsys):
    """RepDistiller's per-model file after mdistiller's archive: the .pth's own sha256 agrees."""
    tar = make_tar(tmp_path / "cifar_teachers.tar")
    assert run(capsys, "fetch", ARCH, "--from", tar)[0] == 0
    with tarfile.open(tar) as t:
        t.extract(f"cifar_teachers/{ARCH}_vanilla/ckpt_epoch_240.pth", tmp_path / "x",
                  filter="data")
    pth = str(tmp_path / "x" / "cifar_teachers" / f"{ARCH}_vanilla" / "ckpt_epoch_240.pth")
    rc, out, err = run(capsys, "fetch", ARCH, "--from", pth)
    assert rc == 0, err
    assert "from an identical .pth (another archive)" in out
    assert convert.read_meta(installed())["archive_sha256"] == sha(tar)


# --- what an archive holds; sha256 on every fetch ----------------------------------------------

def test_fetch_all_from_an_archive_installs_what_it_holds(tmp_path, capsys):
    """cifar_teachers.tar with one teacher: it is installed, the others are named, exit 0."""
    tar = make_tar(tmp_path / "cifar_teachers.tar")
    rc, out, err = run(capsys, "fetch", "all", "--from", tar, "--no-evaluate")
    assert rc == 0 and err == ""
    others = [n for n in catalog.TEACHERS if n != ARCH]
    assert f"not in {tar}: {', '.join(others)} (fetch them without --from" in out
    assert f"1 teacher(s) ready in {teachers.teachers_dir()}: {ARCH};" in out
    assert os.listdir(teachers.teachers_dir()) == [ARCH]
    # A teacher named explicitly must be in the archive; an archive of none of them fails.
    rc, _, err = run(capsys, "fetch", "resnet110", "--from", tar)
    assert rc == 1 and f"{tar} holds no resnet110_vanilla/ckpt_epoch_240.pth" in err
    empty = tmp_path / "empty.tar"
    with tarfile.open(empty, "w") as t:
        t.add(tar, arcname="other/ckpt.pth")
    rc, _, err = run(capsys, "fetch", "all", "--from", str(empty))
    assert rc == 1 and f"{empty} holds none of the published teachers" in err


def test_a_tar_layout_pth_published_alone(tmp_path, capsys, monkeypatch):
    """A teacher published as one .pth in torch's tar layout of 2017 (as torchvision's
    resnet34-333f7ec4.pth is): not taken for an archive, its full sha256 checked, read
    without torch; inside an archive it is found by its published name."""
    from test_pth import save_tar_layout   # tests/test_pth.py
    pth = str(tmp_path / "resnet56-0123abcd.pth")
    save_tar_layout(torch_teacher().state_dict(), pth)
    monkeypatch.setitem(catalog.TEACHERS, ARCH, dataclasses.replace(
        catalog.TEACHERS[ARCH], urls=("http://127.0.0.1:9/resnet56-0123abcd.pth",),
        archive="resnet56-0123abcd.pth", member=None, sha256=sha(pth)))
    assert not fetch.is_archive(pth)
    rc, out, err = run(capsys, "fetch", ARCH, "--from", pth, "--no-evaluate")
    assert rc == 0, err
    model, sd = convert.load_teacher(installed(), ARCH, 100), torch_teacher().state_dict()
    np.testing.assert_array_equal(np.asarray(model.conv1.kernel[...]),
                                  sd["conv1.weight"].permute(2, 3, 1, 0).numpy())
    np.testing.assert_array_equal(np.asarray(model.bn1.var[...]), sd["bn1.running_var"].numpy())
    with tarfile.open(tmp_path / "mine.tar", "w") as t:
        t.add(pth, arcname="weights/resnet56-0123abcd.pth")
    rc, out, err = run(capsys, "fetch", "all", "--from", str(tmp_path / "mine.tar"))
    assert rc == 0 and "from an identical .pth (another archive)" in out, err
    other = tmp_path / "other.pth"
    other.write_bytes(open(pth, "rb").read() + b"\0")
    rc, _, err = run(capsys, "fetch", ARCH, "--from", str(other), "--force")
    assert rc == 1 and (f"{other}: sha256 {sha(other)}, but the published resnet56-0123abcd.pth "
                        f"has sha256 {sha(pth)}. Nothing installed") in err


def test_refetch_verifies_the_installed_files_and_the_cached_archive(tmp_path, capsys):
    """A plain re-fetch checks the installed files and the cached download against the
    sha256 recorded at install; --force reuses the cached archive only if it passes."""
    body = open(make_tar(tmp_path / "cifar_teachers.tar"), "rb").read()
    with Server({"cifar_teachers.tar": body}) as server:
        rc, _, err = run(capsys, "fetch", ARCH, "--no-evaluate", "--url",
                         server.url("cifar_teachers.tar"))
    assert rc == 0, err
    meta_path = os.path.join(installed(), "teacher.json")
    recorded = json.load(open(meta_path))
    rc, out, _ = run(capsys, "fetch", ARCH)
    assert rc == 0 and f"verified (files sha256 {recorded['state_sha256'][:12]}..." in out

    state = os.path.join(installed(), "state")
    biggest = max((os.path.join(d, f) for d, _, fs in os.walk(state) for f in fs),
                  key=os.path.getsize)
    with open(biggest, "r+b") as f:   # one flipped byte in the installed weights
        first = f.read(1)
        f.seek(0)
        f.write(bytes([first[0] ^ 1]))
    rc, _, err = run(capsys, "fetch", ARCH)
    assert rc == 1 and f"error: {state}: sha256 " in err
    assert f"has sha256 {recorded['state_sha256']}. Nothing installed" in err
    assert f"`python -m kd_jax.teachers fetch {ARCH} --force`" in err
    rc, _, err = run(capsys, "fetch", ARCH, "--force", "--no-evaluate")   # the cache is intact
    assert rc == 0, err
    assert run(capsys, "fetch", ARCH)[0] == 0

    cached = os.path.join(fetch.downloads_dir(), "cifar_teachers.tar")
    with open(cached, "ab") as f:   # the cached download changes
        f.write(b"\0" * 512)
    before = open(meta_path, "rb").read()
    for force in ([], ["--force"]):
        rc, _, err = run(capsys, "fetch", ARCH, *force)
        assert rc == 1
        assert (f"error: {cached}: sha256 {sha(cached)}, but the download {ARCH} was installed "
                f"from ({meta_path}) has sha256 {hashlib.sha256(body).hexdigest()}. Nothing "
                "installed; the installed teacher is unchanged") in err
        assert open(meta_path, "rb").read() == before and os.path.isfile(cached)


def test_a_missing_optional_dependency_keeps_the_download(tmp_path, capsys, monkeypatch):
    """A .pth holding what kd_jax's reader does not rebuild (a sparse tensor) needs torch;
    without it the error says so and the cached download stays."""
    src = tmp_path / "src" / "cifar_teachers" / f"{ARCH}_vanilla"
    os.makedirs(src)
    torch.save({"model": torch_teacher().state_dict(), "extra": torch.eye(2).to_sparse()},
               src / "ckpt_epoch_240.pth")
    archive = tmp_path / "cifar_teachers.tar"
    with tarfile.open(archive, "w") as t:
        t.add(tmp_path / "src" / "cifar_teachers", arcname="cifar_teachers")
    monkeypatch.setitem(sys.modules, "torch", None)   # `import torch` fails from here on
    with Server({"cifar_teachers.tar": archive.read_bytes()}) as server:
        rc, _, err = run(capsys, "fetch", ARCH, "--url", server.url("cifar_teachers.tar"))
    assert rc == 1 and "_rebuild_sparse_tensor" in err and "needs PyTorch" in err
    assert "(the download stays in the cache)" in err
    assert os.path.isfile(os.path.join(fetch.downloads_dir(), "cifar_teachers.tar"))
