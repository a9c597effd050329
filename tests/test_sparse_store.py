"""Sparse at rest: bitmask + values in safetensors, expanded back byte for byte."""

import hashlib
import json
import struct

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from app.registry.embedded import EmbeddedRegistry
from app.registry.sparse_store import SUFFIX, expand, pack


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def pruned_file(tmp_path):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(256, 512, generator=g).to(torch.bfloat16)
    w[torch.rand(w.shape, generator=g) < 0.6] = 0  # 60% zeros
    q = torch.randint(-127, 128, (128, 256), dtype=torch.int8, generator=g)
    q[:, ::2] = 0  # int8 with half zeros, like a pruned W8A8 layer
    tensors = {
        "layers.0.w": w,
        "layers.0.q": q,
        "norm": torch.randn(512, generator=g),  # dense: stays as it is
        "neg_zero": torch.tensor([-0.0, 0.0, 1.0, -0.0] * 64),
    }
    path = tmp_path / "model.safetensors"
    save_file(tensors, path, metadata={"format": "pt"})
    return path, tensors


def test_pack_then_expand_is_bit_exact(pruned_file, tmp_path):
    path, tensors = pruned_file
    original_sha, original_size = _sha(path), path.stat().st_size
    sparse = pack(path)
    assert sparse is not None and sparse.name == "model" + SUFFIX and not path.exists()
    assert sparse.stat().st_size < 0.8 * original_size
    out = tmp_path / "expanded.safetensors"
    assert expand(sparse, out) == original_sha == _sha(out)
    loaded = load_file(out)
    for name, t in tensors.items():
        assert torch.equal(loaded[name], t)
    # -0.0 is a distinct bit pattern and must survive as such.
    assert torch.equal(torch.signbit(loaded["neg_zero"]), torch.signbit(tensors["neg_zero"]))


def test_sparse_file_is_valid_safetensors(pruned_file):
    path, tensors = pruned_file
    sparse = pack(path)
    stored = load_file(sparse)
    nonzero = (tensors["layers.0.w"].view(torch.int16) != 0).flatten().numpy()
    assert np.array_equal(
        np.unpackbits(stored["layers.0.w::mask"].numpy())[: nonzero.size], nonzero
    )
    assert stored["layers.0.w::values"].numel() == int(nonzero.sum())
    assert "norm" in stored and "norm::mask" not in stored


def test_dense_files_are_left_alone(tmp_path):
    path = tmp_path / "model.safetensors"
    save_file({"w": torch.randn(64, 64)}, path)
    assert pack(path) is None and path.exists()


def test_corrupted_sparse_file_is_refused(pruned_file, tmp_path):
    path, _ = pruned_file
    sparse = pack(path)
    data = bytearray(sparse.read_bytes())
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    start = 8 + n + header["layers.0.w::values"]["data_offsets"][0]
    data[start] ^= 0xFF
    sparse.write_bytes(bytes(data))
    out = tmp_path / "out.safetensors"
    with pytest.raises(ValueError, match="does not match"):
        expand(sparse, out)
    assert not out.exists()


def test_registry_serves_an_expanded_copy(pruned_file, tmp_path):
    path, _ = pruned_file
    original_sha = _sha(path)
    home = tmp_path / "reg"
    reg = EmbeddedRegistry(home, create=True)
    with reg.draft("pruned") as draft:
        (draft.path / "config.json").write_text("{}")
        pack(path).rename(draft.path / ("model" + SUFFIX))
        draft.publish()
    served = reg.servable_path("pruned")
    assert served != home / "pruned" and (served / "config.json").exists()
    assert _sha(served / "model.safetensors") == original_sha
    assert reg.servable_path("pruned") == served  # cached
    reg.remove("pruned")
    assert not served.exists()


def test_a_sparse_form_that_would_not_expand_back_leaves_the_dense_file(pruned_file, monkeypatch):
    """Packing checks the round trip before it deletes anything: a fault while packing (here
    every packed value written wrong) keeps the dense file, whole, and leaves no sparse one."""
    from app.registry import sparse_store

    path, _ = pruned_file
    before = path.read_bytes()
    real_write = sparse_store._write

    def faulty_write(out, header, chunks):
        real_write(out, header, [bytes(b ^ 0x01 for b in c) for c in chunks])

    monkeypatch.setattr(sparse_store, "_write", faulty_write)
    with pytest.raises(ValueError, match="does not expand back to the dense file"):
        pack(path)
    assert path.read_bytes() == before
    assert list(path.parent.glob("*" + SUFFIX)) == [] and not list(path.parent.glob("*.check"))
