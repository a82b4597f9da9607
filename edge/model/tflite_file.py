"""Read the metadata entries of a .tflite flatbuffer without any TFLite runtime.

Only the few fields needed are walked (Model.metadata -> Metadata.name/buffer -> Buffer.data),
so reading a 25 MB model's manifest costs microseconds and works beside any runtime, including
tflite-runtime, which ships no schema. Offsets are bounds-checked: a corrupt file is an error,
never a crash.
"""

from __future__ import annotations

import struct

FILE_IDENTIFIER = b"TFL3"

# Field indices in schema.fbs
_MODEL_BUFFERS, _MODEL_METADATA = 4, 6
_METADATA_NAME, _METADATA_BUFFER = 0, 1
_BUFFER_DATA, _BUFFER_OFFSET, _BUFFER_SIZE = 0, 1, 2


class TFLiteFormatError(ValueError):
    pass


class _Reader:
    def __init__(self, buf: bytes | memoryview):
        self.buf = memoryview(buf)

    def _u(self, fmt: str, pos: int) -> int:
        size = struct.calcsize(fmt)
        if pos < 0 or pos + size > len(self.buf):
            raise TFLiteFormatError(f"offset {pos} outside the file ({len(self.buf)} bytes)")
        return struct.unpack_from(fmt, self.buf, pos)[0]

    def field(self, table: int, index: int) -> int | None:
        vtable = table - self._u("<i", table)
        vt_size = self._u("<H", vtable)
        slot = 4 + 2 * index
        if slot >= vt_size:
            return None
        off = self._u("<H", vtable + slot)
        return table + off if off else None

    def indirect(self, pos: int) -> int:
        return pos + self._u("<I", pos)

    def vector(self, table: int, index: int) -> tuple[int, int]:
        """(start, length) of a vector field; (0, 0) when absent."""
        pos = self.field(table, index)
        if pos is None:
            return 0, 0
        vec = self.indirect(pos)
        return vec + 4, self._u("<I", vec)

    def table_at(self, vec_start: int, i: int) -> int:
        return self.indirect(vec_start + 4 * i)

    def bytes_of(self, table: int, index: int) -> bytes:
        start, n = self.vector(table, index)
        if start + n > len(self.buf):
            raise TFLiteFormatError("a vector runs past the end of the file")
        return bytes(self.buf[start:start + n])

    def scalar(self, table: int, index: int, fmt: str, default: int = 0) -> int:
        pos = self.field(table, index)
        return default if pos is None else self._u(fmt, pos)


def check_identifier(buf: bytes) -> None:
    if len(buf) < 8:
        raise TFLiteFormatError(f"only {len(buf)} bytes: too short for a TFLite model")
    if bytes(buf[4:8]) != FILE_IDENTIFIER:
        raise TFLiteFormatError(f"not a TFLite flatbuffer (identifier {bytes(buf[4:8])!r}, expected b'TFL3')")


def read_metadata(buf: bytes) -> dict[str, bytes]:
    """All Model.metadata entries: name -> the bytes of the buffer it points at."""
    check_identifier(buf)
    r = _Reader(buf)
    try:
        model = r.indirect(0)
        meta_start, n_meta = r.vector(model, _MODEL_METADATA)
        buf_start, n_buf = r.vector(model, _MODEL_BUFFERS)
        out: dict[str, bytes] = {}
        for i in range(n_meta):
            entry = r.table_at(meta_start, i)
            name = r.bytes_of(entry, _METADATA_NAME).decode("utf-8", "replace")
            index = r.scalar(entry, _METADATA_BUFFER, "<I")
            if index >= n_buf:
                raise TFLiteFormatError(f"metadata {name!r} points at buffer {index} of {n_buf}")
            buffer = r.table_at(buf_start, index)
            data = r.bytes_of(buffer, _BUFFER_DATA)
            offset = r.scalar(buffer, _BUFFER_OFFSET, "<Q")
            if not data and offset > 1:  # models over 2 GB keep buffers after the flatbuffer
                size = r.scalar(buffer, _BUFFER_SIZE, "<Q")
                if offset + size > len(buf):
                    raise TFLiteFormatError(f"buffer {index} runs past the end of the file")
                data = bytes(buf[offset:offset + size])
            out[name] = data
        return out
    except (struct.error, TFLiteFormatError) as e:
        raise TFLiteFormatError(f"truncated or corrupt TFLite file: {e}") from None
