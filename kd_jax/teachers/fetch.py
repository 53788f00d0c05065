"""Fetching a published teacher: get the file, convert it, verify it, install it.

    fetch(["resnet32x4"])                       # download (or reuse the cached archive)
    fetch(["resnet32x4"], from_file="cifar_teachers.tar")   # offline

For each teacher:
  1. the source file: `from_file`, else the archive cached in <cache_dir()>/downloads, else a
     download (resumable, kd_jax.teachers.download) from the catalog's URL (`url` overrides
     it, e.g. a mirror), else, for CIFAR teachers, RepDistiller's per-model file;
  2. the .pth: the archive member `<arch>_vanilla/ckpt_epoch_240.pth` (any leading folder;
     for a teacher published as a single .pth, its file name), or the file itself;
  3. conversion with kd_jax.convert (every key used, every leaf filled), PyTorch not needed
     (kd_jax.convert.pth);
  4. verification: the .pth's sha256 where the catalog has it (torchvision's files), the
     accuracy recorded in the checkpoint, and the accuracy `measure` gives (the command passes
     one measuring the test split with kd_jax.evaluate when it is present), each within
     `tolerance` points of the published top-1;
  5. installation into <teachers dir>/<arch>/ (written beside it, then renamed into place),
     teacher.json recording the archive's sha256 and that of the installed files.

sha256 on every later fetch: a teacher already installed is verified (its files against
their recorded hash, and the cached download, if the teacher came from it, against the
archive's recorded hash) before anything is reused; force=True converts again, but only from
a cached archive that passes that check. A mismatch names the file and both hashes and installs
nothing. A file of other bytes (another download, `from_file`) replaces an installed teacher
only with force=True.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import hashlib
import json
import os
import shutil
import tarfile
import tempfile
from typing import Any, Callable, Optional

from kd_jax import convert
from kd_jax.cache import cache_dir
from kd_jax.convert import pth as pth_files
from kd_jax.convert.converted import META_FILE, STATE_DIR, write_meta
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


class HashMismatch(FetchError):
    """A file's sha256 differs from the one it must have (published or recorded)."""


class NotInArchive(FetchError):
    """The archive is readable but holds no checkpoint of this teacher."""


def _mismatch(path: str, actual: str, expected: str, whose: str, then: str) -> HashMismatch:
    return HashMismatch(f"{path}: sha256 {actual}, but {whose} has sha256 {expected}. "
                        f"Nothing installed; {then}")


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
    """A tar archive of checkpoints, by content or by name; a .pth is a zip file, a pickle
    stream, or, from torch before 0.1.10, a tar file of its own layout."""
    if os.path.isfile(path) and tarfile.is_tarfile(path):
        return not pth_files.is_torch_tar(path)
    return path.endswith((".tar", ".tar.gz", ".tgz"))


def extract_checkpoint(teacher: catalog.Teacher, path: str, tmp: str) -> tuple[str, str]:
    """(path of the teacher's .pth, its name) from an archive (extracted into `tmp`) or a .pth."""
    if not is_archive(path):
        return path, os.path.basename(path)
    try:
        with tarfile.open(path) as tar:
            members = [m for m in tar.getmembers() if m.isfile()]
            wanted = teacher.member or teacher.archive
            found = [m for m in members if m.name == wanted or m.name.endswith("/" + wanted)]
            if not found:
                pths = [m.name for m in members if m.name.endswith(".pth")]
                raise NotInArchive(f"{teacher.name}: {path} holds no {wanted} (its .pth files: "
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
                       pth_digest: str, force: bool, target: str, log: Callable) -> Optional[str]:
    """How the installed teacher came from the same bytes (nothing to convert), else None.
    Different bytes raise FetchError, or with `force` are reported and replaced."""
    if installed is None:
        return None
    first, first_pth = installed.get("archive_sha256"), installed.get("source_sha256")
    if first == digest or first_pth == pth_digest:
        if force:
            return None
        same = "identical bytes" if first == digest else "an identical .pth (another archive)"
        return f"from {same} (sha256 {digest[:12]}...)"
    msg = (f"{teacher.name}: the file has sha256 {digest}, but the first download of this "
           f"teacher (recorded in {os.path.join(target, META_FILE)}) had {first}: the "
           "published bytes changed, or this is another file")
    if not force:
        raise ChangedBytesError(msg + "; pass --force to replace the installed teacher")
    log("warning: " + msg + "; replacing it (--force)")
    return None


def _uncache(path: str, cached: bool) -> str:
    """Removes a cached download that proved broken (the next fetch must not reuse it);
    the note for the error message."""
    if not cached:
        return ""
    os.remove(path)
    return " (removed from the cache)"


def _check_published_sha256(teacher: catalog.Teacher, pth: str, pth_digest: str, path: str,
                            cached: bool) -> None:
    """The .pth has the catalog's sha256 where it is published (torchvision's files)."""
    if teacher.sha256 and pth_digest != teacher.sha256:
        removed = _uncache(path, cached)
        raise _mismatch(pth, pth_digest, teacher.sha256,
                        f"the published {teacher.urls[0].rsplit('/', 1)[1]}",
                        f"a corrupt or different file{removed}")


def files_sha256(directory: str) -> str:
    """sha256 over the files under `directory`: each one's relative path and sha256, sorted."""
    digest = hashlib.sha256()
    for root, _, files in sorted(os.walk(directory)):
        for name in sorted(files):
            path = os.path.join(root, name)
            digest.update(os.path.relpath(path, directory).encode() + b"\0")
            digest.update(bytes.fromhex(sha256(path)))
    return digest.hexdigest()


def _check_cached_download(teacher: catalog.Teacher, installed: dict, target: str,
                           directory: Optional[str]) -> None:
    """The cached download an installed teacher came from (the archive, or RepDistiller's
    per-model file) still has the recorded sha256."""
    cached = os.path.join(downloads_dir(), str(installed.get("archive")))
    if not ("://" in str(installed.get("source")) and os.path.isfile(cached)):
        return
    digest, recorded = sha256(cached), installed.get("archive_sha256")
    if digest != recorded:
        raise _mismatch(cached, digest, recorded, f"the download {teacher.name} was installed "
                        f"from ({os.path.join(target, META_FILE)})",
                        "the installed teacher is unchanged. Delete the cached file to download "
                        "it again, or install these bytes with "
                        f"`{fetch_command(teacher.name, directory)} --from {cached} --force`")


def _check_installed(teacher: catalog.Teacher, installed: dict, target: str,
                     directory: Optional[str], log: Callable, how: str = "") -> None:
    """The installed teacher's files have the sha256 recorded when it was installed."""
    recorded = installed.get("state_sha256")
    if recorded is None:
        log(f"{teacher.name}: already in {target}{how}, installed before kd_jax recorded the "
            "hash of its files: not verified; --force fetches it again")
        return
    digest = files_sha256(os.path.join(target, STATE_DIR))
    if digest != recorded:
        raise _mismatch(os.path.join(target, STATE_DIR), digest, recorded,
                        f"the teacher as installed ({os.path.join(target, META_FILE)})",
                        "its files changed. Install it again with "
                        f"`{fetch_command(teacher.name, directory)} --force`")
    log(f"{teacher.name}: already in {target}{how}, verified (files sha256 {digest[:12]}..., "
        f"archive sha256 {str(installed.get('archive_sha256'))[:12]}...); --force fetches it "
        "again")


@contextlib.contextmanager
def _reading(teacher: catalog.Teacher, path: str, cached: bool):
    """Turns a failure to extract or convert `path` into a FetchError that says why, and
    drops a cached download that cannot be read."""
    try:
        yield
    except (ChangedBytesError, HashMismatch, NotInArchive):
        raise
    except FetchError as e:   # not a readable tar archive
        if cached:
            os.remove(path)
            raise FetchError(f"{e} Removed it from the cache; run the fetch again.") from e
        raise
    except ImportError as e:   # an optional dependency: the download is not at fault, it stays
        raise FetchError(f"{teacher.name}: {e}" + (" (the download stays in the cache)"
                                                   if cached else "")) from e
    except (pth_files.UnsafePickleError, pth_files.UnsupportedPthError) as e:
        raise FetchError(f"{teacher.name}: {e}") from e
    except pth_files.PthError as e:   # a corrupt .pth
        raise FetchError(f"{teacher.name}: {e}{_uncache(path, cached)}") from e
    except convert.ConversionError as e:
        raise FetchError(f"{teacher.name}: {path} is not a {teacher.name} checkpoint: "
                         f"{e}") from e


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
        # The hash a later fetch verifies the installed files against.
        write_meta(staging, dict(convert.read_meta(staging),
                                 state_sha256=files_sha256(os.path.join(staging, STATE_DIR))))
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
    if installed is not None and not from_file:
        _check_cached_download(teacher, installed, target, directory)
        if not force:
            _check_installed(teacher, installed, target, directory, log)
            return installed

    path, origin, cached = source_file(teacher, from_file, url, log, directory)
    digest = sha256(path)
    with tempfile.TemporaryDirectory() as tmp, _reading(teacher, path, cached):
        pth, member = extract_checkpoint(teacher, path, tmp)
        pth_digest = digest if pth == path else sha256(pth)
        _check_published_sha256(teacher, pth, pth_digest, path, cached)
        same = _same_as_installed(teacher, installed, digest, pth_digest, force, target, log)
        if same:
            _check_installed(teacher, installed, target, directory, log, f", {same}")
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


def resolve_names(names: list[str], from_file: Optional[str] = None) -> list[str]:
    """The teachers `names` asks for ('all': every published one); FetchError for an unknown
    name, or for several names with a single .pth as `from_file`."""
    if names == ["all"]:
        names = list(catalog.TEACHERS)
    unknown = [n for n in names if n not in catalog.TEACHERS]
    if unknown:
        raise FetchError(f"unknown teacher(s) {', '.join(unknown)}; published teachers: "
                         f"{', '.join(catalog.TEACHERS)} (or 'all')")
    if from_file and len(names) > 1 and not is_archive(from_file):
        raise FetchError(f"--from {from_file} is a single checkpoint: name exactly one teacher")
    return names


@dataclasses.dataclass
class Outcome:
    """What `fetch` did. `ok`: at least one teacher is ready and none failed."""

    ready: dict[str, dict] = dataclasses.field(default_factory=dict)   # name -> teacher.json
    not_held: list[str] = dataclasses.field(default_factory=list)      # not in the archive
    failed: dict[str, str] = dataclasses.field(default_factory=dict)   # name -> why

    @property
    def ok(self) -> bool:
        return bool(self.ready) and not self.failed


def fetch(names: list[str], **kwargs) -> Outcome:
    """fetch_one for each of `names` (see resolve_names). With 'all' and an archive as
    `from_file`, the teachers it does not hold are skipped (Outcome.not_held), not failed."""
    names_given = names
    names = resolve_names(names, kwargs.get("from_file"))
    outcome = Outcome()
    for name in names:
        try:
            outcome.ready[name] = fetch_one(catalog.TEACHERS[name], **kwargs)
        except NotInArchive as e:
            if names_given != ["all"]:
                outcome.failed[name] = str(e)
            else:
                outcome.not_held.append(name)
        except FetchError as e:
            outcome.failed[name] = str(e)
    return outcome
