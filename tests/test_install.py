"""solopo as a user installs it: the wheel, in a virtualenv outside the checkout, its console scripts run from an
empty directory (smoke training, evaluation, a report, --help, shell completion).

The virtualenv gets the wheel alone; its dependencies (torch, Lightning, ...) resolve from this interpreter's
site-packages through a .pth line, which adds that folder to sys.path without running the .pth files in it, so an
editable install of the checkout there stays inactive. The test asserts that solopo is imported from the wheel."""
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BUILD_IGNORE = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", "outputs",
                                      "multirun", "wandb", "tests", "experiments")
# without the checkout on PYTHONPATH (as tests run): pip would take it for an installed solopo
CLEAN = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}


def test_readme_installs_as_ci_does():
    """.ci/run installs exactly as README says: one of README's install blocks is .ci/run's commands, in order. An
    install from another index (PyTorch's CPU one, which CI's machine cannot reach) is an optional note, not a step
    README told every CPU-only user to take while CI did otherwise."""
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()
          if line.strip().startswith(("python -m pip ", "pip ", "pytest"))]
    install = (ROOT / "README.md").read_text().split("\n## Install\n")[1].split("\n## ")[0]
    blocks = [[line.split("#")[0].strip() for line in block.splitlines() if line.split("#")[0].strip()]
              for block in re.findall(r"```bash\n(.*?)```", install, flags=re.S)]
    assert ci in blocks
    other_index = [paragraph for paragraph in install.split("\n\n") if "--index-url" in paragraph]
    assert other_index and all(paragraph.startswith("Optional") for paragraph in other_index)


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    """A virtualenv outside the checkout holding the wheel built from the checkout; returns its bin folder."""
    base = tmp_path_factory.mktemp("install")
    source = base / "source"  # a copy: building in the checkout would leave build/ and egg-info behind there
    shutil.copytree(ROOT, source, ignore=BUILD_IGNORE)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", base / "dist", source], check=True,
                   env=CLEAN)
    (wheel,) = (base / "dist").glob("solopo-*.whl")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", base / "venv"], check=True)
    python = base / "venv" / "bin" / "python"
    subprocess.run([*pip, "--python", python, "install", "--no-deps", wheel], check=True, env=CLEAN)
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True, env=CLEAN).stdout.strip()
    dependencies = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    (Path(site) / "dependencies.pth").write_text("\n".join(dependencies) + "\n")
    return base / "venv" / "bin"


def run(command: list, cwd: Path, **env) -> str:
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=600,
                          env={**CLEAN, "WANDB_MODE": "offline", "SOLOPO_CACHE": str(cwd / "cache"), **env})
    assert done.returncode == 0, f"{command}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def test_the_wheel_trains_evaluates_and_reports_from_an_empty_directory(venv, tmp_path):
    where = run([venv / "python", "-c", "import solopo; print(solopo.__file__)"], tmp_path)
    assert where.startswith(str(venv.parent)), where  # the wheel's copy, not the checkout
    run([venv / "solopo-train", "experiment=smoke", "logger=csv", "hydra.run.dir=train"], tmp_path)
    run([venv / "solopo-eval", "experiment=smoke", "hydra.run.dir=eval"], tmp_path)
    assert "1 run;" in run([venv / "solopo-report", "train", "--out", "report"], tmp_path)
    assert {"results.json", "run.log"} <= {p.name for p in (tmp_path / "train").iterdir()}
    assert (tmp_path / "eval" / "results.json").is_file() and (tmp_path / "report" / "report.md").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "eval", "report", "train"]  # nothing else written


def test_the_console_scripts_answer_help_and_shell_completion(venv, tmp_path):
    assert "hparams_search: optuna" in run([venv / "solopo-train", "--help"], tmp_path)  # the config groups
    assert "hydra_bash_completion" in run([venv / "solopo-train", "--shell-completion", "install=bash"], tmp_path)
    # what bash asks when a user presses TAB after `solopo-train algo=`
    options = run([venv / "solopo-train", "--shell-completion", "query=bash"], tmp_path,
                  COMP_LINE="solopo-train algo=").split()
    assert {"algo=dpo", "algo=simpo", "algo=orpo"} <= set(options)
    assert "usage: solopo-report" in run([venv / "solopo-report", "--help"], tmp_path)
    assert "solopo-build: SoLoPO triplets" in run([venv / "solopo-build", "--help"], tmp_path)
    # the builder's console script runs its checks first: a key it lacks is one line, exit status 2
    done = subprocess.run([venv / "solopo-build", "lenght=3", "input.path=x", "output=y.jsonl"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert (done.returncode, done.stderr) == (2, "error: lenght=3: solopo-build reads no such key\n")
