"""Pruned weights sparse at rest: a bitmask plus the non-zero values, in safetensors.

A pruned model saved by transformers is exactly as big as the dense one: zeros are
stored like any other value. At rest, the registry keeps each mostly-zero tensor as
`<name>::mask` (one bit per element, packed) and `<name>::values` (the non-zero
elements, same dtype); the original header rides along in the file's metadata. An engine
gets the file back byte for byte (checked against the dense file's sha256).

Works on raw bytes with numpy, whatever the dtype (bf16, int8...): no torch needed.
"""

import hashlib
import json
import struct
from pathlib import Path

import numpy as np

SUFFIX = ".sparse.safetensors"
_FORMAT = "sparsegate-bitmask-v1"
_ELEMENT = {
    **dict.fromkeys(["BOOL", "U8", "I8", "F8_E4M3", "F8_E5M2"], 1),
    **dict.fromkeys(["BF16", "F16", "I16", "U16"], 2),
    **dict.fromkeys(["F32", "I32", "U32"], 4),
    **dict.fromkeys(["F64", "I64", "U64"], 8),
}
_UINT = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}
# Below this share of zeros a mask costs more than it saves (1 bit against 8-64).
MIN_ZEROS = 0.2


def _read(path: Path) -> tuple[bytes, dict, memoryview]:
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    raw_header = data[8 : 8 + n]
    return raw_header, json.loads(raw_header), memoryview(data)[8 + n :]


def _write(path: Path, header: dict, chunks: list[bytes]) -> None:
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # keep the data aligned, as safetensors does
    with path.open("wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for chunk in chunks:
            f.write(chunk)


def pack(path: Path) -> Path | None:
    """Rewrite `x.safetensors` as `x.sparse.safetensors` if that saves bytes; returns it."""
    raw_header, header, body = _read(path)
    dense_sha = hashlib.sha256(path.read_bytes()).hexdigest()
    out_header: dict = {}
    chunks: list[bytes] = []
    offset = 0
    packed_any = False

    def add(name: str, dtype: str, shape: list[int], blob: bytes) -> None:
        nonlocal offset
        out_header[name] = {
            "dtype": dtype,
            "shape": shape,
            "data_offsets": [offset, offset + len(blob)],
        }
        chunks.append(blob)
        offset += len(blob)

    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        blob = bytes(body[start:end])
        size = _ELEMENT.get(info["dtype"])
        if size is not None and len(blob):
            elements = np.frombuffer(blob, dtype=_UINT[size])
            nonzero = elements != 0
            if 1 - nonzero.mean() >= MIN_ZEROS:
                mask = np.packbits(nonzero)
                add(f"{name}::mask", "U8", [mask.size], mask.tobytes())
                values = elements[nonzero]
                add(f"{name}::values", info["dtype"], [values.size], values.tobytes())
                packed_any = True
                continue
        add(name, info["dtype"], info["shape"], blob)
    if not packed_any:
        return None
    out_header["__metadata__"] = {
        "format": _FORMAT,
        "original_header": raw_header.decode(),
        "dense_sha256": dense_sha,
    }
    sparse = path.with_name(path.name.removesuffix(".safetensors") + SUFFIX)
    _write(sparse, out_header, chunks)
    if sparse.stat().st_size >= path.stat().st_size:
        sparse.unlink()
        return None
    _check_expands_back(sparse)  # before the dense file goes, never after
    path.unlink()
    return sparse


def _check_expands_back(sparse: Path) -> None:
    """Raise, removing the sparse file, unless it expands byte for byte to the dense one."""
    trial = sparse.with_name(sparse.name + ".check")
    try:
        expand(sparse, trial)
    except Exception as e:  # whatever the fault, the dense file stays and this goes
        sparse.unlink()
        raise ValueError(f"{sparse.name} does not expand back to the dense file: {e}") from e
    finally:
        trial.unlink(missing_ok=True)


def expand(sparse: Path, out: Path) -> str:
    """Write the original dense file back to `out`; returns its (verified) sha256."""
    _, header, body = _read(sparse)
    meta = header["__metadata__"]
    if meta.get("format") != _FORMAT:
        raise ValueError(f"{sparse}: not a sparsegate sparse file")
    original_raw = meta["original_header"].encode()
    original = json.loads(original_raw)

    def tensor(name: str) -> bytes:
        start, end = header[name]["data_offsets"]
        return bytes(body[start:end])

    digest = hashlib.sha256()
    with out.open("wb") as f:
        for piece in (struct.pack("<Q", len(original_raw)), original_raw):
            f.write(piece)
            digest.update(piece)
        # Tensors in data order, so offsets come out exactly as they were.
        for name, info in sorted(
            ((k, v) for k, v in original.items() if k != "__metadata__"),
            key=lambda kv: kv[1]["data_offsets"][0],
        ):
            if f"{name}::mask" in header:
                size = _ELEMENT[info["dtype"]]
                start, end = info["data_offsets"]
                count = (end - start) // size
                nonzero = np.unpackbits(np.frombuffer(tensor(f"{name}::mask"), np.uint8))[:count]
                elements = np.zeros(count, dtype=_UINT[size])
                elements[nonzero.astype(bool)] = np.frombuffer(
                    tensor(f"{name}::values"), _UINT[size]
                )
                blob = elements.tobytes()
            else:
                blob = tensor(name)
            f.write(blob)
            digest.update(blob)
    sha = digest.hexdigest()
    if sha != meta["dense_sha256"]:
        out.unlink()
        raise ValueError(f"{sparse}: expanded file does not match the dense original")
    return sha
