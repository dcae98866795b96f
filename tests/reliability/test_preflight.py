"""The command line's checks before Hydra starts (solopo.preflight): an option no config group holds, a bad value in the
run or in any job of a sweep, a key the config lacks, a missing model folder: one line, exit 2, no run directory."""
import configparser
import re
import sys
import time

import pytest

from solopo.job_checks import job_configs, values_checked
from solopo.preflight import CONF, preflight
from in_process import call
from support import ROOT, run
from test_validation import FIXTURES, shipped_options

MUSIQUE = FIXTURES / "musique.jsonl"


def refuse_bad_values(argv, **kwargs) -> None:
    """The checks the entry points run around Hydra's main, without Hydra."""
    with values_checked(argv, **kwargs):
        pass

@pytest.mark.parametrize("group", [g for g in sorted({group for group, _ in shipped_options()})])
def test_an_unknown_option_of_a_config_group_is_one_line(group, capsys):
    """Hydra answered algo=dpx with a dozen lines; each group's unknown option is now one line listing its options."""
    with pytest.raises(SystemExit) as stopped:
        preflight([f"{group}=nosuch", "seed=1"])
    # a group's common/ folder holds blocks its options compose, not options (conf/data/common)
    options = sorted(option for g, option in shipped_options() if g == group and not option.startswith("common/"))
    assert stopped.value.code == 2 and capsys.readouterr().err == (
        f"error: {group}=nosuch: the config group {group} has no such option; choose one of {', '.join(options)}\n")


@pytest.mark.parametrize("given, meant", [("DPO", "dpo"), ("simpp", "simpo"), ("Orpo", "orpo")])
def test_an_option_in_another_case_or_spelling_is_answered_with_the_one_meant(given, meant, capsys):
    with pytest.raises(SystemExit) as stopped:
        preflight([f"algo={given}"])
    assert stopped.value.code == 2 and capsys.readouterr().err == (
        f"error: algo={given}: the config group algo has no such option; did you mean {meant}? choose one of cdpo, dpo, "
        "ipo, orpo, simpo\n")


@pytest.mark.parametrize("args, bad", [
    (["-m", "algo=dpo,dpx"], "algo=dpx"), (["-m", "algo=choice(ipo,dpx)"], "algo=dpx"), (["+algo=[dpo,dpx]"], "algo=dpx"),
    (["experiment=paper_mini/nope"], "experiment=paper_mini/nope"),
    (["algo=dpo", "experiment=paper_mini/solopo", "experiment=null", "~debug", "algo=glob(*)", "hydra/launcher=basic",
      "seed=1", "data.path='a=b'"], None),
])
def test_every_option_a_command_line_picks_is_checked(args, bad, capsys):
    """Sweeps and lists check each option; null, deletions, globs and Hydra's own groups are left to Hydra (an override
    its grammar cannot read is refused: test_an_override_hydras_grammar_cannot_read_is_one_line)."""
    if bad is None:
        preflight(args)
        return
    with pytest.raises(SystemExit):
        preflight(args)
    assert capsys.readouterr().err.startswith(f"error: {bad}: ")


@pytest.mark.parametrize("arg, line", [
    ("experiment/decisive=a", "experiment/decisive=a: experiment/decisive is a folder of the config group experiment; "
                              "choose experiment=decisive/OPTION"),
    ("data/common=sampling", "data/common=sampling: conf/data/common holds blocks the data options compose, not options")])
def test_a_folder_of_a_group_chosen_as_a_group_is_one_line(arg, line, tmp_path):
    """--help lists such folders beside the groups; Hydra answered "No match in the defaults list" in four lines."""
    done = call("solopo.run", [arg, f"hydra.run.dir={tmp_path / 'run'}"], expect=2)
    assert done.stderr == f"error: {line}\n" and not (tmp_path / "run").exists()


def test_a_block_the_config_lacks_chosen_without_its_plus_is_one_line(tmp_path):
    """README's +data/common@data.sampling=sampling written without its + was answered as a folder chosen as a group
    (choose data=common@data.sampling/OPTION): the line says to add the block with a +."""
    data = tmp_path / "qa.jsonl"
    data.write_text('{"question": "Who?", "relevant": ["A did it."], "answers": ["A"]}\n')
    done = call("solopo.run", ["data=pairs", f"data.path={data}", "data/common@data.sampling=sampling",
                               f"hydra.run.dir={tmp_path / 'run'}"], expect=2)
    assert done.stderr == ("error: data/common@data.sampling=sampling: the defaults list has no "
                           "data/common@data.sampling entry to override; to add the block, write "
                           "+data/common@data.sampling=sampling\n")
    assert not (tmp_path / "run").exists()


def test_a_nested_group_a_users_config_chooses_stays_open_to_overrides(tmp_path):
    """A user's experiment that picks optim/sched in its defaults: optim/sched=linear is Hydra's to take."""
    (tmp_path / "optim" / "sched").mkdir(parents=True)
    (tmp_path / "experiment").mkdir()
    for kind in ("cosine", "linear"):
        (tmp_path / "optim" / "sched" / f"{kind}.yaml").write_text(f"kind: {kind}\n")
    (tmp_path / "experiment" / "mine.yaml").write_text("# @package _global_\ndefaults:\n  - /optim/sched: cosine\n")
    argv = ["--config-dir", str(tmp_path), "experiment=mine", "optim/sched=linear"]
    preflight(argv)
    (overrides, cfg), = job_configs(argv, "config")
    assert cfg.optim.sched.kind == "linear"


def test_options_of_a_users_config_dir_are_known(tmp_path, monkeypatch):
    (tmp_path / "experiment").mkdir()
    (tmp_path / "experiment" / "mine.yaml").write_text("# @package _global_\nseed: 7\n")
    monkeypatch.chdir(tmp_path)
    preflight(["--config-dir", str(tmp_path), "experiment=mine"])
    preflight([f"--config-dir={tmp_path}", "experiment=smoke"])
    with pytest.raises(SystemExit):
        preflight(["experiment=mine"])


def test_the_run_stops_before_any_model_loads(tmp_path):
    """The user sees one line and a failed exit, seconds after the start: the time of Python's imports."""
    started = time.perf_counter()
    done = run(["ra.alpha=-1", f"hydra.run.dir={tmp_path}"], expect=2)
    assert time.perf_counter() - started < 60
    assert "Traceback" not in done.stderr and "parameters" not in done.stdout + done.stderr
    assert done.stderr.strip().splitlines() == ["error: ra.alpha=-1: must be a number >= 0 (0 turns SoLo-RA off)"]
    assert not (tmp_path / "results.json").exists()


def test_a_bad_value_leaves_no_run_directory(tmp_path):
    """The value checks ran inside Hydra's job, which had made outputs/DATE/TIME/ (.hydra/, an empty run.log) for a
    run that stopped at once; they run before Hydra now, on the config Hydra will compose."""
    done = run(["optim.lr=-1", f"hydra.run.dir={tmp_path / 'run'}"], expect=2)
    assert done.stderr.strip().splitlines() == ["error: optim.lr=-1: must be a number > 0"]
    assert not (tmp_path / "run").exists()


def test_a_bad_value_in_any_job_stops_a_sweep_before_its_first(tmp_path, capsys):
    """Job 1 of 4 holds the bad value: nothing runs and no sweep directory is made (Hydra's basic sweeper)."""
    argv = ["-m", "experiment=smoke", "algo=dpo,simpo", "optim.lr=0.001,-1", f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    assert [overrides for overrides, _ in job_configs(argv, "config")] == [
        ["experiment=smoke", "algo=dpo", "optim.lr=0.001"], ["experiment=smoke", "algo=dpo", "optim.lr=-1"],
        ["experiment=smoke", "algo=simpo", "optim.lr=0.001"], ["experiment=smoke", "algo=simpo", "optim.lr=-1"]]
    with pytest.raises(SystemExit) as stopped:
        refuse_bad_values(argv)
    assert stopped.value.code == 2 and capsys.readouterr().err == (
        "error: sweep job 1 (experiment=smoke algo=dpo optim.lr=-1): optim.lr=-1: must be a number > 0\n")
    assert not (tmp_path / "sweep").exists()
    refuse_bad_values(["-m", "experiment=smoke", "algo=dpo,simpo"])  # good values: on to Hydra


UNKNOWN_KEYS = [(["experiment=smoke", "optim.lrr=1"], "optim.lrr=1: OptimSettings takes no such option; did you mean lr?"),
                (["foo=1"], "foo=1: solopo reads no such key"),
                (["data.bath_size=2"], "data.bath_size=2: data=qa reads no such key; did you mean batch_size?"),
                # a mandatory key given beside a lacking one is not taken for the lacking one (data.path: ??? until set)
                (["data=musique", f"data.path={MUSIQUE}", "logger=csv", "logger.prefix=x"],
                 "logger.prefix=x: the config has no such key; to add one, write +logger.prefix=x"),
                (["-m", "optim.lrr=1,2"],
                 "sweep job 0 (+optim.lrr=1): optim.lrr=1: OptimSettings takes no such option; did you mean lr?"),
                # a key the logger takes, though the config lacks it: Hydra wants the +
                (["logger=csv", "logger.prefix=x"], "logger.prefix=x: the config has no such key; to add one, write "
                                                    "+logger.prefix=x")]


@pytest.mark.parametrize("argv, message", UNKNOWN_KEYS, ids=[" ".join(a) for a, _ in UNKNOWN_KEYS])
def test_a_key_the_config_lacks_is_named_in_one_line(argv, message, capsys):
    """Without +, Hydra refused such a key in nine lines ("Could not override ... HYDRA_FULL_ERROR") and exit 1."""
    with pytest.raises(SystemExit) as stopped:
        refuse_bad_values(argv)
    assert stopped.value.code == 2 and capsys.readouterr().err == f"error: {message}\n"


def test_the_command_refuses_a_key_the_config_lacks(tmp_path):
    done = call("solopo.run", ["experiment=smoke", "optim.lrr=1", f"hydra.run.dir={tmp_path / 'run'}"], expect=2)
    assert done.stderr == "error: optim.lrr=1: OptimSettings takes no such option; did you mean lr?\n"
    assert not (tmp_path / "run").exists()
    done = call("solopo.evaluate", ["foo=1", f"hydra.run.dir={tmp_path / 'run'}"], expect=2)
    assert done.stderr == "error: foo=1: solopo reads no such key\n" and not (tmp_path / "run").exists()


@pytest.mark.parametrize("argv", [["optim.lr=-1", "--help"], ["optim.lr=-1", "--cfg", "hydra"],
                                  ["-m", "optim.lr=-1", "hydra/launcher=slurm"]])  # checked by the job, on its machine
def test_values_are_left_to_hydra_where_it_answers_or_runs_elsewhere(argv):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher") if "hydra/launcher=slurm" in argv else None
    assert job_configs(argv, "config") == []


@pytest.mark.parametrize("mode", ["job", "all"])
def test_cfg_job_prints_the_config_then_stops_with_the_runs_line(mode, tmp_path):
    """`--cfg job` (Hydra prints the config and runs no job) skipped the checks: it printed, with exit status 0, a config
    the run refuses. It prints it now, then the run's line and status."""
    refused = call("solopo.run", ["experiment=smoke", "optim.lr=-1", f"hydra.run.dir={tmp_path / 'run'}"], expect=2)
    shown = call("solopo.run", ["experiment=smoke", "optim.lr=-1", "--cfg", mode], expect=2)
    assert "\noptim:\n  lr: -1\n" in shown.stdout and shown.stderr == refused.stderr == (
        "error: optim.lr=-1: must be a number > 0\n")
    evaluation = call("solopo.evaluate", ["eval.depths=[2]", "--cfg", mode], expect=2)
    assert "  depths:\n  - 2\n" in evaluation.stdout and evaluation.stderr.startswith("error: eval.depths=[2]: each depth")
    assert call("solopo.run", ["experiment=smoke", "--cfg", mode]).stderr == ""  # a good config: printed, status 0
    assert not (tmp_path / "run").exists()


def test_cfg_job_of_a_config_hydra_cannot_compose_is_the_runs_line_alone():
    """A key the config lacks: Hydra cannot print it (its error spans six lines, exit 1); the run's line, exit 2."""
    shown = call("solopo.run", ["experiment=smoke", "optim.lrr=1", "--cfg", "job"], expect=2)
    assert shown.stdout == "" and shown.stderr == "error: optim.lrr=1: OptimSettings takes no such option; did you mean lr?\n"
    assert call("solopo.run", ["experiment=smoke", "optim.lr=-1", "--cfg", "hydra"]).stderr == ""  # Hydra's own config


def test_an_evaluation_checks_only_what_it_reads_before_hydra(capsys):
    with pytest.raises(SystemExit):
        refuse_bad_values(["eval.depths=[2]"], training=False)
    assert capsys.readouterr().err.startswith("error: eval.depths=[2]: each depth")


ONLY_TRAINING = [(["algo.beta=0.3"], "algo.beta=0.3: only training reads this key; solopo-eval would ignore it"),
                 (["trainer.max_steps=5"],
                  "trainer.max_steps=5: only training reads this key; solopo-eval would ignore it"),
                 (["optim.lr=-1"], "optim.lr=-1: only training reads this key; solopo-eval would ignore it"),
                 (["algo=dpo"], "algo=dpo: only training reads the algo group; solopo-eval would ignore it"),
                 # the evaluation answers on the GPU where there is one, whatever the trainer's accelerator
                 (["trainer.accelerator=cpu"],
                  "trainer.accelerator=cpu: only training reads this key; solopo-eval would ignore it"),
                 # the eval group's keys that say when a training run evaluates: an evaluation evaluates once, whatever
                 # they say
                 (["eval.every_n_steps=2"],
                  "eval.every_n_steps=2: only training reads this key; solopo-eval would ignore it"),
                 (["eval.enabled=false"],
                  "eval.enabled=false: only training reads this key; solopo-eval would ignore it"),
                 # the cap on training items: the held-out questions and their passages are the same whatever it is
                 (["data.source.n_train=5"],
                  "data.source.n_train=5: only training reads this key; solopo-eval would ignore it"),
                 (["-m", "data.long_len=256,512"], "sweep job 0 (data.long_len=256 experiment=smoke): "
                                                   "data.long_len=256: only training reads this key; solopo-eval "
                                                   "would ignore it")]


@pytest.mark.parametrize("argv, line", ONLY_TRAINING, ids=[" ".join(a) for a, _ in ONLY_TRAINING])
def test_an_evaluation_names_an_override_only_training_reads(argv, line, tmp_path):
    """solopo-eval took them and evaluated as if they were not there, exit 0 (experiment=smoke: on the tiny model)."""
    done = call("solopo.evaluate", [*argv, "experiment=smoke", f"hydra.run.dir={tmp_path / 'run'}",
                                    f"hydra.sweep.dir={tmp_path / 'run'}"], expect=2)
    assert done.stderr == f"error: {line}\n" and not (tmp_path / "run").exists()


READER = {"solopo.evaluate": "solopo-eval", "solopo.run": "solopo-train"}
DELETED = [("solopo.evaluate", "~trainer", "trainer.precision"), ("solopo.evaluate", "~model", "model"),
           ("solopo.evaluate", "~seed", "seed"), ("solopo.evaluate", "~data", "data.source, data.template"),
           ("solopo.evaluate", "~data.template", "data.template"),
           ("solopo.evaluate", "~data.source.n_val", "data.source.n_val"), ("solopo.evaluate", "~eval", "eval"),
           ("solopo.run", "~seed", "seed"), ("solopo.run", "~data.template", "data.template"),
           ("solopo.run", "~trainer", "trainer"), ("solopo.run", "~trainer.max_steps", "trainer.max_steps"),
           ("solopo.run", "~algo", "algo")]


@pytest.mark.parametrize("module, override, held", DELETED, ids=[f"{m} {o}" for m, o, _ in DELETED])
def test_a_deletion_of_what_the_run_reads_is_named(module, override, held, tmp_path):
    """One rule for both commands (solopo.settings.keys.check_deletions). solopo-eval: ~trainer and ~data.template
    evaluated with defaults in silence, exit 0; ~seed and ~data.source.n_val stopped in a traceback (the latter in a
    new run directory); ~model and ~eval on keys the message listed, not the deletion. solopo-train: ~data.template
    trained on the default prompt in silence, exit 0; ~seed and ~trainer.max_steps stopped in a traceback; ~trainer
    and ~algo on their _target_, not the deletion."""
    done = call(module, [override, "experiment=smoke", f"hydra.run.dir={tmp_path / 'run'}"], expect=2)
    assert done.stderr == f"error: {override}: deletes {held}, which {READER[module]} reads\n"
    assert not (tmp_path / "run").exists()


def test_a_deletion_of_what_the_run_can_do_without_is_taken():
    """No experiment logger (logger=none: an empty group), no benchmark (eval=default: the held-out questions), no
    sampling block (data=pairs has none; smoke's pairs are gold): solopo.settings.keys.OPTIONAL, for training as for
    an evaluation, which refused ~eval.benchmark."""
    refuse_bad_values(["experiment=smoke", "~logger", "~data.sampling", "eval=longbench", "~eval.benchmark"])
    refuse_bad_values(["experiment=smoke", "eval=longbench", "~eval.benchmark"], training=False)


HYDRA_CANNOT = [("solopo.evaluate", ["~eval.every_n_steps"],
                 "~eval.every_n_steps: eval.every_n_steps is null already; Hydra deletes only a key that holds a value"),
                ("solopo.run", ["-m", "seed=0,1", "~eval.every_n_steps"],
                 "~eval.every_n_steps: eval.every_n_steps is null already; Hydra deletes only a key that holds a value"),
                ("solopo.run", ["~optim.nosuch"], "~optim.nosuch: the config has no such key")]


@pytest.mark.parametrize("module, argv, line", HYDRA_CANNOT, ids=[f"{m} {' '.join(a)}" for m, a, _ in HYDRA_CANNOT])
def test_a_deletion_hydra_cannot_make_is_one_line(module, argv, line, tmp_path):
    """Hydra's delete takes a key whose value is null for a key the config lacks: "Could not delete from config.
    'eval.every_n_steps' does not exist" and a hint at HYDRA_FULL_ERROR, exit 1, for a key conf/eval/default.yaml
    holds."""
    done = call(module, [*argv, "experiment=smoke", f"hydra.run.dir={tmp_path / 'run'}",
                         f"hydra.sweep.dir={tmp_path / 'run'}"], expect=2)
    assert done.stderr == f"error: {line}\n" and not (tmp_path / "run").exists()


def test_an_evaluation_takes_the_keys_it_reads():
    """The model, eval, the data source and what it reads (data.path, data.split), data.template, the trainer's
    precision (trainer=cpu sets it), the seed and Hydra's keys; an overlay at the top of the config (experiment=)."""
    refuse_bad_values(["experiment=smoke", "model=tiny", "model.max_length=4096", "trainer=cpu",
                       "trainer.precision=32-true", "seed=3", "eval.n_items=2", "eval.lengths=[short,256]",
                       "data.template=cot", "data.source.n_test=3", "hydra.job.chdir=false"], training=False)
    refuse_bad_values(["experiment=smoke", "data=pairs", f"data.path={FIXTURES / 'pairs.jsonl'}", "data.split=train"],
                      training=False)


def test_an_evaluation_hydra_composed_alone_names_them_too(tmp_path):
    """Where only Hydra composes the config (--config-path), the evaluation's own check names them, from Hydra's record
    of the command line, before the model loads."""
    done = call("solopo.evaluate", ["--config-path", str(CONF), "experiment=smoke", "algo.beta=0.3",
                                    f"hydra.run.dir={tmp_path / 'run'}"], expect=2)
    assert done.stderr == "error: algo.beta=0.3: only training reads this key; solopo-eval would ignore it\n"
    assert not (tmp_path / "run" / "results.json").exists()


@pytest.mark.parametrize("module", ["solopo.run", "solopo.evaluate"])
def test_a_missing_model_folder_stops_both_commands_before_hydra(module, tmp_path):
    """solopo-eval loaded the tokenizer from it: a 74-line Hugging Face traceback, exit 1, and an evaluate.log left
    in a new run directory. Both commands ask the one check (refuse_missing_model), before Hydra starts."""
    done = call(module, [f"model.name={tmp_path}/none", f"hydra.run.dir={tmp_path / 'run'}"], expect=2)
    assert done.stderr == f"error: model.name={tmp_path}/none: no such folder\n"
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("argv, modes", [(["-m", "algo=dpo,simpo", "--cfg", "job"], "--multirun and --cfg"),
                                          (["--info", "-sc", "install=bash"], "--info and --shell-completion"),
                                          (["--run", "--multirun", "seed=1,2"], "--run and --multirun")])
def test_two_things_for_hydra_to_do_are_one_line(argv, modes, capsys):
    """Hydra raised "Only one of --run, --multirun, --cfg, --info and --shell_completion can be specified" with a
    dozen-line traceback; one of them, or --help beside them, passes."""
    with pytest.raises(SystemExit) as stopped:
        preflight(argv)
    assert stopped.value.code == 2 and capsys.readouterr().err.startswith(f"error: {modes}: Hydra does one of")
    preflight(["-m", "algo=dpo,simpo", "--help"])
    preflight(["--cfg", "job", "-cd", "/tmp", "algo=dpo"])


@pytest.mark.parametrize("arg, package, extra", [("hparams_search=optuna", "hydra-optuna-sweeper", "optuna"),
                                                 ("hydra/launcher=slurm", "hydra-submitit-launcher", "slurm")])
def test_an_option_whose_hydra_plugin_is_missing_is_one_line(arg, package, extra, capsys, monkeypatch):
    """The line named 'solopo[optuna]', which pip cannot find for an install from a wheel (solopo is not on PyPI);
    it names the package the extra brings."""
    from solopo.preflight import PLUGIN_OPTIONS

    module = PLUGIN_OPTIONS[arg][0]
    extras = configparser.ConfigParser()
    extras.read(ROOT / "setup.cfg")
    assert package in re.split(r"[<>=\s]+", extras["options.extras_require"][extra])
    monkeypatch.setitem(sys.modules, "hydra_plugins", None)  # a plain install: no Hydra plugin, no hydra_plugins
    monkeypatch.delitem(sys.modules, module, raising=False)  # nor the plugin an earlier test imported
    with pytest.raises(SystemExit) as stopped:
        preflight([arg, "experiment=smoke"])
    assert stopped.value.code == 2 and capsys.readouterr().err == (
        f"error: {arg}: Hydra's {module.split('.')[-1]} plugin is not installed; pip install {package}\n")


VALUE_CANNOT = [
    ("solopo.run", ["logger=csv", "~logger.save_dir"], "~logger.save_dir: Hydra resolves logger.save_dir to delete it, "
     "and its value ${hydra:runtime.output_dir} is known only once the run starts; set logger.save_dir instead"),
    ("solopo.evaluate", ["data=pairs", "~data.source.path"], "~data.source.path: Hydra resolves data.source.path to "
     "delete it, and its value ${data.path} cannot be resolved (Missing mandatory value: data.path)"),
    ("solopo.run", ["~seed=5"], "~seed=5: seed is 0, not 5; ~KEY=VALUE deletes KEY only where it holds VALUE, ~KEY "
     "whatever it holds"),
    ("solopo.run", ["-m", "seed=0,1", "~optim=3"], "~optim=3: optim is a group of keys, not 3; ~KEY=VALUE deletes KEY "
     "only where it holds VALUE, ~KEY whatever it holds"),
    ("solopo.run", ["logger=csv", "~logger=wandb"], "~logger=wandb: logger=csv is chosen, not logger=wandb; "
     "~GROUP=OPTION deletes GROUP only where OPTION is chosen, ~GROUP whatever is chosen"),
    ("solopo.evaluate", ["~debug=fast"], "~debug=fast: no debug option is chosen, so there is none to delete")]


@pytest.mark.parametrize("module, argv, line", VALUE_CANNOT, ids=[" ".join(a) for _, a, _ in VALUE_CANNOT])
def test_a_deletion_of_a_value_hydra_cannot_make_is_one_line(module, argv, line, tmp_path):
    """A key whose value Hydra cannot resolve before the run starts (it resolves it to delete it), ~KEY=VALUE where
    KEY holds another value and ~GROUP=OPTION where another option is chosen: each was Hydra's error and a hint at
    HYDRA_FULL_ERROR, exit 1."""
    done = call(module, [*argv, "experiment=smoke", f"hydra.run.dir={tmp_path / 'run'}",
                         f"hydra.sweep.dir={tmp_path / 'run'}"], expect=2)
    assert done.stderr == f"error: {line}\n" and not (tmp_path / "run").exists()


@pytest.mark.parametrize("arg, line", [
    ("data.path=x(1).jsonl", "error: data.path=x(1).jsonl: Hydra's override grammar cannot read it (mismatched input "
                             "'.' expecting <EOF>); write \"data.path='x(1).jsonl'\" (quoted for the shell too)"),
    ("data.path=daten/ü.jsonl", "error: data.path=daten/ü.jsonl: Hydra's override grammar cannot read it (token "
                                "recognition error at: 'ü'); write \"data.path='daten/ü.jsonl'\""),
    ("eval.lengths=[short,256", "error: eval.lengths=[short,256: Hydra's override grammar cannot read it (no viable "
                                "alternative at input '[short,256'); close its brackets"),
    ("data.path=a=b", "error: data.path=a=b: Hydra's override grammar cannot read it (mismatched input '=' expecting "
                      "<EOF>); write \"data.path='a=b'\""),
])
def test_an_override_hydras_grammar_cannot_read_is_one_line(arg, line, capsys):
    """A file name with parentheses or a non-ASCII letter got Hydra's parser's words ("mismatched input '.' expecting
    <EOF>", not naming the override) on three lines, exit status 1; quoted, the same value passes."""
    with pytest.raises(SystemExit) as stopped:
        preflight(["experiment=smoke", arg], run_dir=False)
    (found,) = capsys.readouterr().err.strip().splitlines()
    assert stopped.value.code == 2 and found.startswith(line), found
    key, _, value = arg.partition("=")
    if not value.startswith("["):
        preflight(["experiment=smoke", f"{key}='{value}'"], run_dir=False)


BLOCKS_AS_VALUES = [
    (["eval.scorer=ExactMatch"], "eval.scorer=ExactMatch: expected a block with a _target_, not a value; set "
     "eval.scorer._target_=CLASS; did you mean eval.scorer._target_=solopo.scoring.ExactMatch?"),
    (["data.source=foo"], "data.source=foo: expected a block with a _target_, not a value; set data.source._target_=CLASS"),
    (["eval=ruler", "eval.benchmark=x"], "eval.benchmark=x: expected a block with a _target_, not a value; set "
     "eval.benchmark._target_=CLASS (one of solopo.eval.longbench.LongBench, solopo.eval.ruler.RulerQA)")]


@pytest.mark.parametrize("argv, message", BLOCKS_AS_VALUES, ids=[" ".join(a) for a, _ in BLOCKS_AS_VALUES])
def test_a_value_where_a_block_with_a_target_belongs_is_one_line(argv, message, capsys):
    """eval.scorer=ExactMatch (for eval.scorer._target_=...) was an AttributeError traceback, exit 1; and
    eval.benchmark=x silently evaluated the held-out questions instead of the benchmark."""
    with pytest.raises(SystemExit) as stopped:
        refuse_bad_values(argv)
    assert stopped.value.code == 2 and capsys.readouterr().err == f"error: {message}\n"
