"""Secrets never reach the run directory: a credential-looking key on the command line is refused before Hydra writes
.hydra/; a sweep job's folder name keeps to safe characters, so an override cannot place it outside the sweep."""
import hashlib

import pytest

from solopo.preflight import refuse_secrets, safe_dirname
from support import smoke_here


def test_a_secret_on_the_command_line_is_refused_before_hydra_writes(tmp_path):
    """Before the fix the run went on, results.json redacted the token, and .hydra/ kept it in plain text."""
    run_dir = tmp_path / "run"
    done = smoke_here(["+model.extra.token=s3cr3t", f"hydra.run.dir={run_dir}"], expect=2)
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("error: model.extra.token: secrets are not accepted on the "
                                                           "command line")
    assert "environment variables" in done.stderr and "s3cr3t" not in done.stdout + done.stderr
    assert not run_dir.exists()  # no .hydra/config.yaml, overrides.yaml or hydra.yaml holds it


@pytest.mark.parametrize("override", ["+logger.api_key=s3cr3t", "++hf_token=s3cr3t", "~db.password=s3cr3t",
                                      "+wandb.WANDB_API_KEY=s3cr3t", "+x.secret=s3cr3t"])
def test_every_credential_looking_key_is_refused(override, capsys):
    with pytest.raises(SystemExit) as stopped:
        refuse_secrets(["algo=dpo", override])
    assert stopped.value.code == 2 and "s3cr3t" not in capsys.readouterr().err


def test_keys_that_only_contain_a_secret_word_pass():
    refuse_secrets(["model.tokenizer=gpt2", "+data.n_tokens=3", "+secretary=x", "ra=both", "-m"])


def test_sweep_job_folders_keep_to_safe_characters(tmp_path):
    """data.path=x/../../../../d once made the job folder <sweep>/0_data.path=x/../../../../d, four levels up."""
    sweep = tmp_path / "a" / "b"
    smoke_here(["data=pairs", "data.path=x/../../../../d", f"hydra.sweep.dir={sweep}", "-m"], expect=None)  # no such file
    jobs = sorted(p.parent for p in tmp_path.rglob(".hydra"))
    assert [job.parent for job in jobs] == [sweep] and jobs[0].name.startswith("0_data.path=x_________d,")


def test_safe_dirname():
    assert safe_dirname("data.path=/d/../e f,algo=dpo") == "data.path=_d___e_f,algo=dpo"
    assert safe_dirname("a" * 300) == "a" * 191 + "_" + hashlib.sha256(b"a" * 300).hexdigest()[:8]
    assert ".." not in safe_dirname("data.path=...../x")
