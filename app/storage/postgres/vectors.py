"""numpy float32 arrays <-> pgvector ``vector`` values, in pgvector's binary wire format.

The format (pgvector ``vector_send``/``vector_recv``): uint16 dimensions, uint16
unused (0), then each component as a big-endian float32. Only 1-D float arrays are
dumped, so a stray array of another shape fails here rather than in the database.
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
import psycopg
from psycopg.adapt import Dumper, Loader
from psycopg.pq import Format
from psycopg.types import TypeInfo

from app.core.types import FloatArray

_HEADER = struct.Struct(">HH")
_WIRE_DTYPE = np.dtype(">f4")
# pgvector's limit for the vector type.
MAX_DIMENSIONS = 16_000


def encode_vector(vector: FloatArray) -> bytes:
    array = np.asarray(vector)
    if array.ndim != 1 or not 0 < array.shape[0] <= MAX_DIMENSIONS:
        raise ValueError(f"a vector must be 1-D with 1..{MAX_DIMENSIONS} values, got {array.shape}")
    return _HEADER.pack(array.shape[0], 0) + array.astype(_WIRE_DTYPE).tobytes()


def decode_vector(data: bytes | bytearray | memoryview) -> FloatArray:
    dim, unused = _HEADER.unpack_from(data)
    if unused != 0 or len(data) != _HEADER.size + dim * _WIRE_DTYPE.itemsize:
        raise ValueError(f"malformed vector value ({len(data)} bytes for {dim} dimensions)")
    values = np.frombuffer(data, dtype=_WIRE_DTYPE, count=dim, offset=_HEADER.size)
    return values.astype(np.float32)


def decode_vector_text(text: str) -> FloatArray:
    return np.asarray(text.strip("[]").split(","), dtype=np.float32)


class _VectorBinaryDumper(Dumper):
    format = Format.BINARY

    def dump(self, obj: Any) -> bytes:
        return encode_vector(obj)


class _VectorBinaryLoader(Loader):
    format = Format.BINARY

    def load(self, data: Any) -> FloatArray:
        return decode_vector(data)


class _VectorTextLoader(Loader):
    format = Format.TEXT

    def load(self, data: Any) -> FloatArray:
        return decode_vector_text(bytes(data).decode("ascii"))


def fetch_vector_type(connection: psycopg.Connection[Any]) -> TypeInfo:
    """The ``vector`` type of this database (the pgvector extension must be installed)."""
    info = TypeInfo.fetch(connection, "vector")
    if info is None:
        raise psycopg.ProgrammingError("the pgvector type 'vector' is not in this database")
    return info


def register_vectors(connection: psycopg.Connection[Any], info: TypeInfo) -> None:
    """Send numpy arrays as ``vector`` (use ``%b`` placeholders); read ``vector`` as arrays."""
    info.register(connection)
    dumper = type("NumpyVectorDumper", (_VectorBinaryDumper,), {"oid": info.oid})
    connection.adapters.register_dumper(np.ndarray, dumper)
    connection.adapters.register_loader(info.oid, _VectorBinaryLoader)
    connection.adapters.register_loader(info.oid, _VectorTextLoader)
