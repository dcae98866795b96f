"""wandb dashboards: the tags, group and name of a run, and a sweep read back from its offline run files."""
import struct

from solopo.training.loggers import sweep_group, wandb_labels

from in_process import run_here

CHOICES = {"algo": "dpo", "ra": "chosen", "method": "solopo", "data": "qa", "model": "tiny", "trainer": "cpu"}


def test_a_sweep_job_is_grouped_by_its_sweep_and_named_by_its_overrides():
    labels = wandb_labels(CHOICES, 1.0, True, "multirun/2025-03-01/14-02-59", "algo=dpo,ra.alpha=1")
    assert labels == {"tags": ["algo=dpo", "ra=chosen", "method=solopo", "data=qa", "model=tiny", "alpha=1"],
                      "group": "2025-03-01_14-02-59", "name": "algo=dpo,ra.alpha=1"}


def test_a_single_run_has_no_group_and_the_config_wins():
    assert wandb_labels(CHOICES, 0.5, False, "multirun/2025-03-01/14-02-59", "algo=dpo") == {
        "tags": ["algo=dpo", "ra=chosen", "method=solopo", "data=qa", "model=tiny", "alpha=0.5"],
        "group": None, "name": None}
    labels = wandb_labels({}, 3.0, True, "multirun/x", "", group="alpha-study", name="first")
    assert labels == {"tags": ["alpha=3"], "group": "alpha-study", "name": "first"}
    assert wandb_labels({}, 0.0, True, "/scratch/sweeps/alpha_study", "")["name"] is None  # no overrides: wandb names it


def test_sweep_group_names():
    assert sweep_group("multirun/2025-03-01/14-02-59") == "2025-03-01_14-02-59"
    assert sweep_group("/scratch/sweeps/alpha_study") == "alpha_study"


def test_presets_and_the_configs_own_tags_are_added():
    """experiment and debug are tagged only where chosen (Hydra records an unchosen group as None); the config's
    tags (+logger.tags=[...]) follow the automatic ones, each once."""
    choices = {**CHOICES, "experiment": "smoke", "debug": None}
    assert wandb_labels(choices, 1.0, False, tags=["mine", "algo=dpo"])["tags"] == [
        "algo=dpo", "ra=chosen", "method=solopo", "data=qa", "model=tiny", "experiment=smoke", "alpha=1", "mine"]


def wandb_records(path):
    """The protobuf records of an offline run file (run-*.wandb): a 7-byte file header, then records in 32 KiB
    blocks, each piece behind a 7-byte header (checksum, length, kind: 1 whole, 2 first, 3 middle, 4 last)."""
    from wandb.proto import wandb_internal_pb2

    data, position, pieces = path.read_bytes(), 7, b""
    while position + 7 <= len(data):
        if 32768 - position % 32768 < 7:  # a block's tail too short for a header is padding
            position += 32768 - position % 32768
            continue
        _, length, kind = struct.unpack("<IHB", data[position : position + 7])
        pieces += data[position + 7 : position + 7 + length]
        position += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pieces)
            pieces = b""
            yield record


def test_multirun_jobs_share_a_group_in_separate_runs(tmp_path):
    """A DPO and an ORPO smoke job logged offline, with WANDB_DIR set and a tag of one's own: two wandb runs (each job
    finishes its own) under WANDB_DIR, one group, named apart and tagged as smoke runs; TRL's metric names in their
    history, no _step/_epoch twins, and the evaluation's headline numbers in each run's summary."""
    env = dict(WANDB_MODE="offline", WANDB_SILENT="true", SOLOPO_CACHE=str(tmp_path / "cache"),
               WANDB_DIR=str(tmp_path / "wandb_files"))
    run_here(["-m", "algo=dpo,orpo", "experiment=smoke", "logger=wandb", "trainer.max_steps=1", "eval.lengths=[short]",
              "+logger.tags=[mine]", f"hydra.sweep.dir={tmp_path / 'sweep'}"], env=env)
    assert not list((tmp_path / "sweep").glob("*/wandb"))
    runs, summaries, history = {}, {}, {}
    for path in sorted((tmp_path / "wandb_files").glob("wandb/offline-run-*/run-*.wandb")):
        for record in wandb_records(path):
            if record.HasField("run"):
                runs[record.run.display_name] = (record.run.run_group, list(record.run.tags))
                name = record.run.display_name
            if record.HasField("summary"):
                summaries.setdefault(name, set()).update(item.key for item in record.summary.update)
            if record.HasField("history"):
                history.setdefault(name, set()).update(item.key or "/".join(item.nested_key)
                                                       for item in record.history.item)
    tags = ["ra=chosen", "method=solopo", "data=qa", "model=tiny", "experiment=smoke", "alpha=1", "mine"]
    dpo, orpo = (f"+logger.tags=[mine],algo={algo},eval.lengths=[short],logger=wandb,trainer.max_steps=1"
                 for algo in ("dpo", "orpo"))
    assert runs == {dpo: ("sweep", ["algo=dpo", *tags]), orpo: ("sweep", ["algo=orpo", *tags])}
    trl = {"rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen",
           "logps/rejected"}
    assert {f"train/{key}" for key in trl} <= history[dpo]
    assert {"train/nll_loss", "train/log_odds_ratio"} <= history[orpo]
    assert {f"val/{key}" for key in trl} <= history[dpo]
    assert not [key for keys in history.values() for key in keys  # wandb's _step and trainer/global_step are axes
                if key.startswith(("train/", "val/")) and key.endswith(("_step", "_epoch"))]
    for keys in summaries.values():
        assert {"eval/base/avg_long", "eval/trained/avg_long", "eval/gain/avg_long"} <= keys
