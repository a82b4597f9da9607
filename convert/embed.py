"""Write the manifest into the .tflite flatbuffer as a Model.metadata entry."""

from __future__ import annotations

import numpy as np

from ecosorter.edge.model.manifest import MANIFEST_NAME
from ecosorter.edge.model.tflite_file import FILE_IDENTIFIER, check_identifier

# TFLite maps weights straight out of the file; keep every buffer 16-byte aligned as the
# converter does (flatbuffers' CreateNumpyVector only aligns to the element size).
BUFFER_ALIGNMENT = 16


def _schema():
    try:
        from ai_edge_litert import schema_py_generated as fb
    except ImportError:
        from tensorflow.lite.python import schema_py_generated as fb
    return fb


def embed_metadata(tflite: bytes, payload: bytes, name: str = MANIFEST_NAME) -> bytes:
    """Return a copy of `tflite` whose metadata entry `name` holds `payload` (replaced if present)."""
    check_identifier(tflite)
    fb = _schema()
    model = fb.ModelT.InitFromPackedBuf(bytearray(tflite), 0)
    for buf in model.buffers or []:
        # Some writers (ai-edge-quantizer) keep tensor data after the flatbuffer, addressed by
        # offset/size; repacking would drop it, so bring it inline first.
        if getattr(buf, "offset", 0) > 1:
            end = buf.offset + buf.size
            if end > len(tflite):
                raise ValueError(f"TFLite buffer runs past the end of the file ({end} > {len(tflite)} bytes)")
            buf.data = np.frombuffer(tflite[buf.offset:end], dtype=np.uint8)
            buf.offset = buf.size = 0
    buffer = fb.BufferT()
    buffer.data = np.frombuffer(payload, dtype=np.uint8)
    model.buffers = model.buffers or []
    for m in model.metadata or []:
        if _name(m) == name:  # the replaced entry's bytes are not carried along as an orphan
            model.buffers[m.buffer].data = None
    model.metadata = [m for m in (model.metadata or []) if _name(m) != name]
    model.buffers.append(buffer)
    entry = fb.MetadataT()
    entry.name = name
    entry.buffer = len(model.buffers) - 1
    model.metadata.append(entry)

    builder = _AlignedBuilder(len(tflite) + len(payload) + 1024)
    builder.Finish(model.Pack(builder), file_identifier=FILE_IDENTIFIER)
    return bytes(builder.Output())


def _builder_class():
    import flatbuffers

    class AlignedBuilder(flatbuffers.Builder):
        def CreateNumpyVector(self, x: np.ndarray) -> int:  # noqa: N802 - flatbuffers' name
            if x.dtype != np.uint8:
                return super().CreateNumpyVector(x)
            self.StartVector(1, x.size, BUFFER_ALIGNMENT)
            self.head -= x.size
            self.Bytes[self.head:self.head + x.size] = x.tobytes()
            return self.EndVector()

    return AlignedBuilder


def _AlignedBuilder(size: int):  # noqa: N802 - reads as a class at the call site
    return _builder_class()(size)


def _name(m) -> str:
    n = m.name
    return n.decode() if isinstance(n, bytes) else str(n)
