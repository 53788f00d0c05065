"""Fetching a published teacher: get the file, convert it, verify it, install it.

    fetch(["resnet32x4"])                       # download (or reuse the cached archive)
    fetch(["resnet32x4"], from_file="cifar_teachers.tar")   # offline

For each teacher:
  1. the source file: `from_file`, else the archive cached in <cache_dir()>/downloads, else a
     download (resumable, kd_jax.teachers.download) from the catalog's URL (`url` overrides
     it, e.g. a mirror), else, for CIFAR teachers, RepDistiller's per-model file;
  2. the .pth: the archive member `<arch>_vanilla/ckpt_epoch_240.pth` (any leading folder),
     or the file itself;
  3. conversion with kd_jax.convert (every key used, every leaf filled);
  4. verification: the accuracy recorded in the checkpoint, and the accuracy `measure` gives
     (the command passes one measuring the test split with kd_jax.evaluate when it is
     present), each within `tolerance` points of the published top-1; torchvision files also
     match the sha256 prefix in their name;
  5. installation into <teachers dir>/<arch>/ (written beside it, then renamed into place),
     teacher.json recording the archive's sha256. A later fetch whose bytes differ says so
     and replaces the teacher only with force=True.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import re
import shutil
import tarfile
import tempfile
from typing import Any, Callable, Optional

from kd_jax import convert
from kd_jax.cache import cache_dir
from kd_jax.convert.converted import META_FILE
from kd_jax.convert.torch_files import sha256
from kd_jax.errors import storage_cause
from kd_jax.teachers import catalog, fetch_command, teachers_dir
from kd_jax.teachers.download import DownloadError, download

# (teacher, converted model) -> its metrics on the test split, or None (kd_jax.teachers.__main__).
Measure = Callable[[catalog.Teacher, Any], Optional[dict]]

TOLERANCE = catalog.TOLERANCE


class FetchError(RuntimeError):
    """A teacher could not be fetched, converted or verified (nothing was installed)."""


class ChangedBytesError(FetchError):
    """The file differs from the one the installed teacher was fetched from."""


def downloads_dir() -> str:
    return os.path.join(cache_dir(), "downloads")


def _offline_hint(teacher: catalog.Teacher, urls: list[str], directory: Optional[str]) -> str:
    return (f"download {urls[0]} on a machine with network access and run "
            f"`{fetch_command(teacher.name, directory)} --from FILE` (FILE: that {teacher.archive}"
            + (" or the teacher's .pth" if teacher.member else "") + ")")


def source_file(teacher: catalog.Teacher, from_file: Optional[str] = None,
                url: Optional[str] = None, log: Callable = print,
                directory: Optional[str] = None) -> tuple[str, str, bool]:
    """(local path, where it came from, is_cached_download) of `teacher`'s source file."""
    if from_file:
        if not os.path.isfile(from_file):
            raise FetchError(f"--from {from_file}: no such file")
        return os.path.abspath(from_file), os.path.abspath(from_file), False
    urls = [url] if url else list(teacher.urls)
    cached = os.path.join(downloads_dir(), teacher.archive)
    if os.path.isfile(cached):
        log(f"using the cached {cached}")
        return cached, urls[0], True
    errors = []
    for u in urls:
        try:
            return download(u, cached, log=log), u, True
        except DownloadError as e:
            errors.append(str(e))
    fallback = None if url else catalog.fallback_url(teacher)
    if fallback:
        log(f"  falling back to RepDistiller's file {fallback}")
        dest = os.path.join(downloads_dir(), f"{teacher.name}_vanilla_ckpt_epoch_240.pth")
        if os.path.isfile(dest):
            return dest, fallback, True
        try:
            return download(fallback, dest, log=log), fallback, True
        except DownloadError as e:
            errors.append(str(e))
    raise FetchError(f"{teacher.name}: could not download ({'; '.join(errors)}). Without a "
                     f"network: {_offline_hint(teacher, urls, directory)}")


def is_archive(path: str) -> bool:
    """A tar archive by name or by content (a .pth is a zip file or a raw pickle)."""
    return path.endswith((".tar", ".tar.gz", ".tgz")) or (os.path.isfile(path)
                                                          and tarfile.is_tarfile(path))


def extract_checkpoint(teacher: catalog.Teacher, path: str, tmp: str) -> tuple[str, str]:
    """(path of the teacher's .pth, its name) from an archive (extracted into `tmp`) or a .pth."""
    if not is_archive(path):
        return path, os.path.basename(path)
    try:
        with tarfile.open(path) as tar:
            members = [m for m in tar.getmembers() if m.isfile()]
            wanted = teacher.member or ""
            found = [m for m in members if m.name == wanted or m.name.endswith("/" + wanted)]
            if not found:
                pths = [m.name for m in members if m.name.endswith(".pth")]
                raise FetchError(f"{path} holds no {wanted} (its .pth files: "
                                 f"{', '.join(pths[:20]) or 'none'})")
            out = os.path.join(tmp, "ckpt.pth")
            src = tar.extractfile(found[0])   # copied into our own file: no paths from the archive
            with open(out, "wb") as f:
                shutil.copyfileobj(src, f, 1 << 20)
            if os.path.getsize(out) != found[0].size:
                raise EOFError(f"{found[0].name} is truncated")
            return out, found[0].name
    except (tarfile.TarError, EOFError, OSError) as e:
        if storage_cause(e):   # writing the extracted file failed, not reading the archive
            raise
        raise FetchError(f"{path} is not a readable tar archive ({type(e).__name__}: {e}); "
                         "a corrupt or truncated download?") from e


def _hash_prefix(url: str) -> Optional[str]:
    """torch.hub's convention: 'resnet34-333f7ec4.pth' -> '333f7ec4' (sha256 prefix)."""
    m = re.search(r"-([a-f0-9]{6,})\.pth$", url)
    return m[1] if m else None


def _installed_meta(path: str) -> Optional[dict]:
    try:
        with open(os.path.join(path, META_FILE)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def verify(teacher: catalog.Teacher, recorded: Optional[float], measured: Optional[float],
           tolerance: float) -> list[str]:
    """The failed checks (empty: verified)."""
    failures = []
    for what, value in (("recorded in the checkpoint", recorded), ("measured", measured)):
        if value is not None and abs(value - teacher.published_top1) > tolerance:
            failures.append(f"top-1 {what} {value:.2f}% differs from the published "
                            f"{teacher.published_top1:.2f}% by more than {tolerance} points")
    return failures


def _same_as_installed(teacher: catalog.Teacher, installed: Optional[dict], digest: str,
                       pth_digest: str, force: bool, target: str, log: Callable) -> bool:
    """True if the installed teacher came from the same bytes (nothing to do). Different bytes
    raise FetchError, or with `force` are reported and replaced."""
    if installed is None:
        return False
    first, first_pth = installed.get("archive_sha256"), installed.get("source_sha256")
    if first == digest or first_pth == pth_digest:
        if force:
            return False
        same = "identical bytes" if first == digest else "an identical .pth (another archive)"
        log(f"{teacher.name}: already in {target}, from {same} (sha256 {digest[:12]}...); "
            "--force converts it again")
        return True
    msg = (f"{teacher.name}: the file has sha256 {digest}, but the first download of this "
           f"teacher (recorded in {os.path.join(target, META_FILE)}) had {first}: the "
           "published bytes changed, or this is another file")
    if not force:
        raise ChangedBytesError(msg + "; pass --force to replace the installed teacher")
    log("warning: " + msg + "; replacing it (--force)")
    return False


def _uncache(path: str, cached: bool) -> str:
    """Removes a cached download that proved broken (the next fetch must not reuse it);
    the note for the error message."""
    if not cached:
        return ""
    os.remove(path)
    return " (removed from the cache)"


def _check_published_hash(teacher: catalog.Teacher, path: str, digest: str,
                          cached: bool) -> None:
    """A torchvision file's sha256 starts with the prefix in its published name."""
    prefix = _hash_prefix(teacher.urls[0]) if teacher.member is None else None
    if prefix and not digest.startswith(prefix):
        removed = _uncache(path, cached)
        raise FetchError(f"{path}: sha256 {digest[:12]}... does not start with {prefix}, the "
                         f"hash in the published name {teacher.urls[0].rsplit('/', 1)[1]}: "
                         "a corrupt or different file" + removed)


@contextlib.contextmanager
def _reading(teacher: catalog.Teacher, path: str, cached: bool):
    """Turns a failure to extract or convert `path` into a FetchError that says why, and
    drops a cached download that cannot be read."""
    try:
        yield
    except ChangedBytesError:
        raise
    except FetchError as e:
        if cached:
            os.remove(path)
            raise FetchError(f"{e} Removed it from the cache; run the fetch again.") from e
        raise
    except convert.ConversionError as e:
        raise FetchError(f"{teacher.name}: {path} is not a {teacher.name} checkpoint: "
                         f"{e}") from e
    except Exception as e:   # torch.load of a file that is no checkpoint
        if storage_cause(e):   # a full disk or a permission: the download itself is fine
            raise
        removed = _uncache(path, cached)
        raise FetchError(f"{teacher.name}: {path} is neither a tar archive nor a readable "
                         f"PyTorch checkpoint ({type(e).__name__}: {e})" + removed) from e


def _log_converted(teacher: catalog.Teacher, member: str, ckpt, log: Callable) -> None:
    """One line: the archive member converted, its entries, its recorded top-1 and epoch."""
    log(f"{teacher.name}: converted {member} ({len(ckpt.state_dict)} entries"
        + (f", recorded top-1 {ckpt.accuracy:.2f}%" if ckpt.accuracy is not None else "")
        + (f", epoch {ckpt.epoch}" if ckpt.epoch is not None else "") + ")")


def _measure_and_verify(teacher: catalog.Teacher, ckpt, model, measure: Optional[Measure],
                        tolerance: float, log: Callable) -> Optional[dict]:
    """The converted model's measured metrics (None: not measured), once the recorded and
    measured top-1 both match the published one; else FetchError."""
    measured = measure(teacher, model) if measure is not None else None
    if measured is not None:
        log(f"  measured on the {teacher.dataset} test split ({measured['count']} images): "
            f"top-1 {measured['top1']:.2f}%  top-5 {measured['top5']:.2f}%")
    else:
        log(f"  the {teacher.dataset} test split is not present: accuracy not measured"
            + ("" if teacher.dataset == "imagenet2012" else " (pass --data-dir)"))
    failures = verify(teacher, ckpt.accuracy, None if measured is None else measured["top1"],
                      tolerance)
    if failures:
        raise FetchError(f"{teacher.name} failed verification: {'; '.join(failures)}. Not "
                         f"installed (--tolerance changes the allowed difference)")
    return measured


def _record(teacher: catalog.Teacher, ckpt, *, origin: str, path: str, digest: str,
            member: str, pth_digest: str, tolerance: float, measured: Optional[dict],
            installed: Optional[dict]) -> dict:
    """The teacher.json record: where the teacher came from, its hashes and its checks."""
    record = {"arch": teacher.name, "num_classes": teacher.num_classes,
              "dataset": teacher.dataset, "source": origin, "archive": os.path.basename(path),
              "archive_sha256": digest,
              "member": member, "source_sha256": pth_digest,
              "source_format": ckpt.source_format, "accuracy": ckpt.accuracy,
              "epoch": ckpt.epoch, "notes": ckpt.notes,
              "published_top1": teacher.published_top1, "tolerance": tolerance,
              "measured": measured,
              "fetched": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    first = (installed or {}).get("archive_sha256")
    if first and first != digest:
        record["replaced_archive_sha256"] = first
    return record


def _install(model, record: dict, root: str, target: str) -> None:
    """Writes the converted teacher beside `target`, then renames it into place."""
    os.makedirs(root, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{os.path.basename(target)}.", dir=root)
    try:
        convert.save_converted(model, staging, record, overwrite=True)
        if os.path.exists(target):
            old = staging + ".old"
            os.replace(target, old)
            os.replace(staging, target)
            shutil.rmtree(old)
        else:
            os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _log_installed(teacher: catalog.Teacher, target: str, ckpt, measured: Optional[dict],
                   tolerance: float, log: Callable) -> None:
    """One line: where the teacher went and the checks it passed."""
    checks = ["converted"]
    if ckpt.accuracy is not None:
        checks.append(f"recorded {ckpt.accuracy:.2f}%")
    if measured is not None:
        checks.append(f"measured {measured['top1']:.2f}%")
    log(f"  installed {target} ({', '.join(checks)}; published {teacher.published_top1:.2f}%, "
        f"tolerance {tolerance})")


def fetch_one(teacher: catalog.Teacher, *, directory: Optional[str] = None,
              from_file: Optional[str] = None, url: Optional[str] = None, force: bool = False,
              tolerance: float = TOLERANCE, measure: Optional[Measure] = None,
              log: Callable = print) -> dict:
    """Fetches, converts, verifies and installs `teacher`; returns its teacher.json record.

    measure(teacher, model): the converted model's metrics on the teacher's test split
    ({"top1", "top5", "loss", "count"}), or None where the split is not present; None: no
    measurement."""
    root = teachers_dir(directory)
    target = os.path.join(root, teacher.name)
    installed = _installed_meta(target)
    if installed is not None and not force and not from_file:
        log(f"{teacher.name}: already in {target} (archive sha256 "
            f"{str(installed.get('archive_sha256'))[:12]}...); --force fetches it again")
        return installed

    path, origin, cached = source_file(teacher, from_file, url, log, directory)
    digest = sha256(path)
    _check_published_hash(teacher, path, digest, cached)
    with tempfile.TemporaryDirectory() as tmp, _reading(teacher, path, cached):
        pth, member = extract_checkpoint(teacher, path, tmp)
        pth_digest = sha256(pth)
        if _same_as_installed(teacher, installed, digest, pth_digest, force, target, log):
            return installed
        ckpt = convert.read_checkpoint(pth)
        model = convert.torch_to_flax(ckpt.state_dict, teacher.name, teacher.num_classes)
    _log_converted(teacher, member, ckpt, log)
    measured = _measure_and_verify(teacher, ckpt, model, measure, tolerance, log)

    record = _record(teacher, ckpt, origin=origin, path=path, digest=digest, member=member,
                     pth_digest=pth_digest, tolerance=tolerance, measured=measured,
                     installed=installed)
    _install(model, record, root, target)
    _log_installed(teacher, target, ckpt, measured, tolerance, log)
    return convert.read_meta(target)


def fetch(names: list[str], **kwargs) -> dict[str, dict]:
    """fetch_one for each name ('all': every published teacher); {name: record}."""
    if names == ["all"]:
        names = list(catalog.TEACHERS)
    unknown = [n for n in names if n not in catalog.TEACHERS]
    if unknown:
        raise FetchError(f"unknown teacher(s) {', '.join(unknown)}; published teachers: "
                         f"{', '.join(catalog.TEACHERS)}")
    if kwargs.get("from_file") and not is_archive(kwargs["from_file"]) and len(names) != 1:
        raise FetchError(f"--from {kwargs['from_file']} is a single checkpoint: name exactly one "
                         "teacher")
    return {name: fetch_one(catalog.TEACHERS[name], **kwargs) for name in names}
