"""Download an official model pack, verify it, and install the members we use.

Order of trust: the archive's sha256 is checked before the zip is opened; every
member is hashed while it is extracted and checked before it is moved into place;
nothing is installed unless every member verified. Files land under names taken
from the pack description, never from the archive, so a hostile entry name cannot
write outside the models directory (and is refused outright anyway).
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import tempfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

from tqdm import tqdm  # tqdm ships no type information

from app.errors import ModelChecksumMismatch, ModelError, ModelNotFound
from app.inference.catalog import ModelPack, PackMember
from app.inference.manifest import file_sha256

logger = logging.getLogger(__name__)

_CHUNK = 1 << 20
# GitHub release assets redirect to a CDN; a stalled connection should fail, not hang.
_TIMEOUT_S = 60
_USER_AGENT = "facerec-models-fetch"
_HTTP_NOT_FOUND = 404


@dataclass(frozen=True, slots=True)
class InstalledFile:
    path: Path
    sha256: str


@dataclass(frozen=True, slots=True)
class FetchResult:
    pack: str
    files: tuple[InstalledFile, ...]
    downloaded: bool  # False: every member was already present and verified


def archive_url(
    pack: ModelPack, *, url_override: str | None = None, url_base: str | None = None
) -> str:
    """The URL to download: ``url_override``, else ``url_base`` + the archive's file name."""
    if url_override:
        return url_override
    if url_base:
        return f"{url_base.rstrip('/')}/{PurePosixPath(pack.url).name}"
    return pack.url


def fetch_pack(
    pack: ModelPack,
    models_dir: Path,
    *,
    url_override: str | None = None,
    url_base: str | None = None,
    progress: bool = True,
    allow_unpinned: bool = False,
) -> FetchResult:
    """Install ``pack``'s members under ``models_dir/<target_dir>/``; a no-op when verified.

    Raises ModelChecksumMismatch (archive or member hash), ModelNotFound (HTTP 404,
    member absent from the archive) or ModelError (network, unsafe or broken archive,
    unpinned hashes without ``allow_unpinned``). On failure nothing new is left behind.
    """
    unpinned = pack.unpinned()
    if unpinned and not allow_unpinned:
        raise ModelError(
            f"pack {pack.name!r} has no pinned sha256 for {', '.join(unpinned)}; refusing to "
            "install files that cannot be verified (allow it explicitly with --allow-unpinned)"
        )
    installed = _verified_install(pack, models_dir)
    if installed is not None:
        logger.info("pack %s already installed and verified in %s", pack.name, models_dir)
        return FetchResult(pack.name, installed, downloaded=False)

    models_dir.mkdir(parents=True, exist_ok=True)
    url = archive_url(pack, url_override=url_override, url_base=url_base)
    archive, archive_sha256 = _download(url, models_dir, progress=progress)
    try:
        if pack.archive_sha256 is None:
            logger.warning("%s: unpinned archive, sha256 %s", url, archive_sha256)
        elif archive_sha256 != pack.archive_sha256:
            raise ModelChecksumMismatch(
                f"{url}: archive sha256 is {archive_sha256}, pack {pack.name!r} expects "
                f"{pack.archive_sha256}; the download is corrupt or not the pinned release",
                url=url,
            )
        files = _install_members(archive, pack, models_dir)
    finally:
        archive.unlink(missing_ok=True)
    return FetchResult(pack.name, files, downloaded=True)


def _verified_install(pack: ModelPack, models_dir: Path) -> tuple[InstalledFile, ...] | None:
    """The installed members when every one is present with its pinned hash."""
    files = []
    for member in pack.members:
        path = models_dir / pack.member_file(member)
        if member.sha256 is None or not path.is_file() or file_sha256(path) != member.sha256:
            return None
        files.append(InstalledFile(path, member.sha256))
    return tuple(files)


def _download(url: str, directory: Path, *, progress: bool) -> tuple[Path, str]:
    """Stream ``url`` to a temporary file in ``directory``; returns it and its sha256."""
    handle, temp_name = tempfile.mkstemp(prefix=".download-", suffix=".part", dir=directory)
    temp_path = Path(temp_name)
    try:
        with os.fdopen(handle, "wb") as out, _open_url(url) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            digest = _copy_hashing(response, out, total=total, label=url, progress=progress)
    except (OSError, http.client.HTTPException) as exc:
        temp_path.unlink(missing_ok=True)
        raise ModelError(f"download of {url} failed: {exc}", url=url) from exc
    except BaseException:
        temp_path.unlink(missing_ok=True)
        raise
    return temp_path, digest


def _open_url(url: str) -> http.client.HTTPResponse:
    """Open ``url`` (http, https or file); failures become domain errors."""
    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    try:
        response: http.client.HTTPResponse = urllib.request.urlopen(request, timeout=_TIMEOUT_S)
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code == _HTTP_NOT_FOUND:
            raise ModelNotFound(
                f"{url}: HTTP 404 Not Found; check the pack URL, --url or FACEREC_MODELS_URL_BASE",
                url=url,
            ) from exc
        raise ModelError(f"{url}: HTTP {exc.code} {exc.reason}", url=url) from exc
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ModelError(f"could not download {url}: {reason}", url=url) from exc
    return response


def _copy_hashing(
    source: IO[bytes], target: IO[bytes], *, total: int | None, label: str, progress: bool
) -> str:
    digest = hashlib.sha256()
    with tqdm(
        total=total,
        desc=PurePosixPath(label).name,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        disable=not progress,
    ) as bar:
        while chunk := source.read(_CHUNK):
            target.write(chunk)
            digest.update(chunk)
            bar.update(len(chunk))
    return digest.hexdigest()


def _install_members(
    archive_path: Path, pack: ModelPack, models_dir: Path
) -> tuple[InstalledFile, ...]:
    """Extract, verify, then move every member into place (all or nothing)."""
    target_dir = models_dir / pack.target_dir
    created_target_dir = not target_dir.exists()
    target_dir.mkdir(parents=True, exist_ok=True)
    staged: list[tuple[Path, Path, str]] = []
    try:
        try:
            with zipfile.ZipFile(archive_path) as archive:
                entries = archive.infolist()
                _refuse_unsafe_entries(entries, pack)
                for member in pack.members:
                    entry = _find_entry(entries, member, pack)
                    staged.append(_extract_verified(archive, entry, member, target_dir, pack))
        except (zipfile.BadZipFile, zipfile.LargeZipFile) as exc:
            raise ModelError(f"pack {pack.name!r}: not a readable zip archive: {exc}") from exc
        for temp_path, final_path, _ in staged:
            os.replace(temp_path, final_path)
    finally:
        for temp_path, _, _ in staged:
            temp_path.unlink(missing_ok=True)
        if created_target_dir and not any(target_dir.iterdir()):
            target_dir.rmdir()
    return tuple(InstalledFile(final_path, sha256) for _, final_path, sha256 in staged)


def _refuse_unsafe_entries(entries: list[zipfile.ZipInfo], pack: ModelPack) -> None:
    unsafe = [entry.filename for entry in entries if not _is_safe_entry_name(entry.filename)]
    if unsafe:
        raise ModelError(
            f"pack {pack.name!r}: archive has unsafe entry names {unsafe} (absolute or "
            "climbing out with '..'); refusing to unpack it"
        )


def _is_safe_entry_name(name: str) -> bool:
    normalised = name.replace("\\", "/")
    if normalised.startswith("/") or (len(normalised) > 1 and normalised[1] == ":"):
        return False
    return ".." not in normalised.split("/")


def _find_entry(
    entries: list[zipfile.ZipInfo], member: PackMember, pack: ModelPack
) -> zipfile.ZipInfo:
    """The archive entry for ``member``: by exact name, else by basename in a subfolder."""
    files = [entry for entry in entries if not entry.is_dir()]
    exact = [entry for entry in files if entry.filename == member.name]
    if exact:
        return exact[0]
    by_basename = [
        entry
        for entry in files
        if PurePosixPath(entry.filename.replace("\\", "/")).name == member.name
    ]
    if len(by_basename) == 1:
        return by_basename[0]
    if by_basename:
        names = [entry.filename for entry in by_basename]
        raise ModelError(
            f"pack {pack.name!r}: {member.name!r} is ambiguous in the archive: {names}"
        )
    listing = ", ".join(entry.filename for entry in files) or "(empty)"
    raise ModelNotFound(
        f"pack {pack.name!r}: archive has no member {member.name!r}; it holds: {listing}",
        file=member.name,
    )


def _extract_verified(
    archive: zipfile.ZipFile,
    entry: zipfile.ZipInfo,
    member: PackMember,
    target_dir: Path,
    pack: ModelPack,
) -> tuple[Path, Path, str]:
    """Extract ``entry`` to a temporary file beside its destination and check its hash."""
    final_path = target_dir / member.name
    handle, temp_name = tempfile.mkstemp(prefix=f".{member.name}.", suffix=".part", dir=target_dir)
    temp_path = Path(temp_name)
    try:
        with archive.open(entry) as source, os.fdopen(handle, "wb") as out:
            sha256 = _copy_hashing(source, out, total=None, label=member.name, progress=False)
    except BaseException:
        temp_path.unlink(missing_ok=True)
        raise
    if member.sha256 is None:
        logger.warning("%s: unpinned member %s, sha256 %s", pack.name, member.name, sha256)
    elif sha256 != member.sha256:
        temp_path.unlink(missing_ok=True)
        raise ModelChecksumMismatch(
            f"pack {pack.name!r}: member {entry.filename!r} has sha256 {sha256}, expected "
            f"{member.sha256}; refusing to install it",
            path=str(final_path),
        )
    return temp_path, final_path, sha256
