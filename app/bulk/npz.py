"""The embeddings file of ``facerec gallery export`` / ``import-embeddings``.

A numpy ``.npz`` archive (stored, not compressed) that ``numpy.load`` reads as is:

* ``model_id``: 0-d string, the recognizer whose embedding space the rows are in;
* ``subjects``: (N,) strings, the subject of each row;
* ``embeddings``: (N, dim) float32, L2-normalised;
* ``face_ids``: (N,) strings, the face ids in the exporting gallery (optional,
  informative: an import gives faces new ids).

Both directions stream: the writer keeps names in memory but spools vectors to a
temporary file; the reader parses ``.npy`` headers itself and reads rows a batch at a
time, so a million faces (2 GB of vectors) never sit in memory at once. Files are
untrusted input: no pickles, dtypes and shapes checked before any row is read.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import numpy as np
from numpy.lib import format as npy_format

from app.core.types import FloatArray
from app.errors import InvalidRequest

EMBEDDINGS_DTYPE = np.dtype("<f4")
# Export files hold biometric data: owner-only, like the gallery.
FILE_MODE = 0o600
_COPY_CHUNK = 8 << 20
_HEADER_READERS = {
    (1, 0): npy_format.read_array_header_1_0,
    (2, 0): npy_format.read_array_header_2_0,
}
_MAX_HEADER_BYTES = 10_000
# model_id is a short string; a huge one is not a model id.
_MAX_MODEL_ID_CHARS = 1024


@dataclass(frozen=True, slots=True)
class FileSummary:
    model_id: str
    count: int
    dim: int


class EmbeddingFileReader:
    """Reads an embeddings file batch by batch; ``InvalidRequest`` for anything malformed."""

    def __init__(self, path: Path) -> None:
        self._path = path
        try:
            self._zip = zipfile.ZipFile(path)
        except (OSError, zipfile.BadZipFile) as exc:
            raise self._invalid(f"not a readable .npz archive ({exc})") from exc
        try:
            self.summary = self._read_summary()
        except BaseException:
            self._zip.close()
            raise

    def __enter__(self) -> EmbeddingFileReader:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._zip.close()

    def batches(self, batch_size: int) -> Iterator[tuple[list[str], FloatArray]]:
        """``(subjects, embeddings)`` of consecutive rows, ``batch_size`` at a time."""
        count, dim = self.summary.count, self.summary.dim
        with self._member("subjects") as subjects, self._member("embeddings") as embeddings:
            names_dtype = self._header(subjects, "subjects", ndim=1)[1]
            vectors_dtype = self._header(embeddings, "embeddings", ndim=2)[1]
            for start in range(0, count, batch_size):
                rows = min(batch_size, count - start)
                names = _read_rows(subjects, names_dtype, rows, self._invalid)
                vectors = _read_rows(embeddings, vectors_dtype, rows * dim, self._invalid)
                yield (
                    [str(name) for name in names.tolist()],
                    vectors.astype(np.float32).reshape(rows, dim),
                )

    def _read_summary(self) -> FileSummary:
        names = set(self._zip.namelist())
        required = ("model_id", "subjects", "embeddings")
        missing = [key for key in required if f"{key}.npy" not in names]
        if missing:
            raise self._invalid(f"it lacks {', '.join(missing)} (see docs/scale.md)")
        with self._member("model_id") as member:
            _, dtype = self._header(member, "model_id", ndim=0)
            if dtype.kind != "U" or dtype.itemsize > 4 * _MAX_MODEL_ID_CHARS:
                raise self._invalid("model_id must be a short string")
            model_id = str(_read_rows(member, dtype, 1, self._invalid)[0])
        with self._member("subjects") as member:
            (count,), dtype = self._header(member, "subjects", ndim=1)
            if dtype.kind != "U":
                raise self._invalid(f"subjects must be strings, not {dtype}")
        with self._member("embeddings") as member:
            (rows, dim), dtype = self._header(member, "embeddings", ndim=2)
            if dtype.kind != "f" or dtype.itemsize != 4:
                raise self._invalid(f"embeddings must be float32, not {dtype}")
        if rows != count:
            raise self._invalid(f"{count} subjects but {rows} embeddings")
        if not model_id or dim < 1:
            raise self._invalid("model_id must not be empty and embeddings need columns")
        return FileSummary(model_id=model_id, count=count, dim=dim)

    def _member(self, key: str) -> IO[bytes]:
        return self._zip.open(f"{key}.npy")

    def _header(self, member: IO[bytes], key: str, *, ndim: int) -> tuple[Any, np.dtype[Any]]:
        try:
            version = npy_format.read_magic(member)
            read_header = _HEADER_READERS.get(version)
            if read_header is None:
                raise ValueError(f".npy format version {version} is not supported")
            shape, fortran_order, dtype = read_header(member, max_header_size=_MAX_HEADER_BYTES)
        except (ValueError, OSError, SyntaxError) as exc:
            raise self._invalid(f"{key} is not a .npy array ({exc})") from exc
        if dtype.hasobject:
            raise self._invalid(f"{key} holds Python objects; only plain arrays are read")
        if len(shape) != ndim or fortran_order:
            raise self._invalid(f"{key} must be a C-ordered {ndim}-d array, got shape {shape}")
        return shape, dtype

    def _invalid(self, problem: str) -> InvalidRequest:
        return InvalidRequest(f"{self._path} is not a facerec embeddings file: {problem}")


def _read_rows(
    member: IO[bytes], dtype: np.dtype[Any], count: int, invalid: Any
) -> np.ndarray[Any, Any]:
    wanted = count * dtype.itemsize
    data = member.read(wanted)
    if len(data) != wanted:
        raise invalid(f"it ends early ({len(data)} of {wanted} bytes in a batch)")
    return np.frombuffer(data, dtype=dtype)


class EmbeddingFileWriter:
    """Writes an embeddings file; the file appears (atomically) only on ``commit``."""

    def __init__(self, path: Path, *, model_id: str, dim: int) -> None:
        self._path = path
        self._model_id = model_id
        self._dim = dim
        self._subjects: list[str] = []
        self._face_ids: list[str] = []
        # Closed by __exit__; unnamed, so nothing is left behind by a crash.
        self._spool = tempfile.TemporaryFile(dir=path.parent, prefix=f".{path.name}.")  # noqa: SIM115

    def __enter__(self) -> EmbeddingFileWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._spool.close()

    @property
    def count(self) -> int:
        return len(self._subjects)

    def write(
        self, subjects: Sequence[str], face_ids: Sequence[str], embeddings: FloatArray
    ) -> None:
        if embeddings.shape != (len(subjects), self._dim) or len(face_ids) != len(subjects):
            raise ValueError(
                f"a batch of {len(subjects)} rows needs embeddings of shape "
                f"({len(subjects)}, {self._dim}), got {embeddings.shape}"
            )
        self._spool.write(np.ascontiguousarray(embeddings, dtype=EMBEDDINGS_DTYPE).tobytes())
        self._subjects.extend(subjects)
        self._face_ids.extend(face_ids)

    def commit(self) -> None:
        """Write the archive next to its final name, fsync it, rename it into place."""
        fd, partial_name = tempfile.mkstemp(dir=self._path.parent, prefix=f".{self._path.name}.")
        partial = Path(partial_name)
        try:
            os.fchmod(fd, FILE_MODE)
            with os.fdopen(fd, "wb") as raw:
                with zipfile.ZipFile(raw, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
                    _put(archive, "model_id", np.array(self._model_id))
                    _put(archive, "subjects", np.array(self._subjects, dtype=np.str_))
                    _put(archive, "face_ids", np.array(self._face_ids, dtype=np.str_))
                    self._put_spooled_embeddings(archive)
                raw.flush()
                os.fsync(raw.fileno())
            partial.replace(self._path)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise

    def _put_spooled_embeddings(self, archive: zipfile.ZipFile) -> None:
        header = {
            "descr": npy_format.dtype_to_descr(EMBEDDINGS_DTYPE),
            "fortran_order": False,
            "shape": (self.count, self._dim),
        }
        self._spool.seek(0)
        with archive.open("embeddings.npy", "w", force_zip64=True) as member:
            npy_format.write_array_header_2_0(member, header)
            shutil.copyfileobj(self._spool, member, _COPY_CHUNK)


def _put(archive: zipfile.ZipFile, key: str, array: np.ndarray[Any, Any]) -> None:
    with archive.open(f"{key}.npy", "w", force_zip64=True) as member:
        npy_format.write_array(member, array, allow_pickle=False)
