"""What an evaluation (solopo-eval) checks and reads: only its own settings are checked, and the keys
solopo.settings.keys.EVALUATION_KEYS names, with their interpolations, are all it reads (so the training-only
overrides it refuses, tests/reliability/test_preflight.py, would change nothing)."""
import pytest
from omegaconf import OmegaConf, open_dict

from solopo.eval.runner import eval_items

from solopo.settings.build import ConfigError, build_settings, load_source
from support import ROOT, compose_config

FIXTURES = ROOT / "tests" / "fixtures"


def test_evaluation_checks_only_what_it_reads():
    """Training's values set by the config (an experiment overlay) are not the evaluation's to check; given on the
    command line, the evaluation names them (tests/reliability/test_preflight.py)."""
    cfg = compose_config([])
    OmegaConf.update(cfg, "ra.alpha", -1)
    OmegaConf.update(cfg, "optim.lr", 0)
    build_settings(cfg, training=False)
    with pytest.raises(ConfigError, match=r"^eval.depths=\[2\]: each depth"):
        build_settings(compose_config(["eval.depths=[2]"]), training=False)


def junk_outside(cfg, read):
    """``cfg`` with every value outside the keys ``read`` (and Hydra's) replaced by a string no setting takes, a whole
    group at once where none of its keys is read."""
    def walk(node, prefix):
        for key in list(node.keys()):
            path = f"{prefix}{key}"
            if path == "hydra" or any(path == r or path.startswith(f"{r}.") for r in read):
                continue
            if any(r.startswith(f"{path}.") for r in read):
                walk(node[key], f"{path}.")
            else:
                with open_dict(node):
                    node[key] = "junk"
    walk(cfg, "")
    return cfg


@pytest.mark.parametrize("overrides", [[], ["data=pairs", f"data.path={FIXTURES / 'pairs.jsonl'}",
                                            "data.source.n_val=1"], ["eval=longbench", "eval.benchmark.path=/data"]])
def test_what_an_evaluation_reads_is_all_it_reads(overrides):
    """solopo.settings.keys.EVALUATION_KEYS and their interpolations are everything an evaluation reads: with every
    other value junk, it builds the same settings and data; so the overrides it refuses change nothing."""
    from solopo.settings.keys import evaluation_reads

    cfg = compose_config(overrides)
    read = evaluation_reads(cfg)
    junk = junk_outside(compose_config(overrides), read)
    assert (junk.algo, junk.optim, junk.trainer.max_steps, junk.trainer.accelerator) == ("junk",) * 4
    assert build_settings(junk, training=False) == build_settings(cfg, training=False)
    if "eval=longbench" not in overrides:
        assert load_source(junk) == load_source(cfg)


@pytest.mark.parametrize("overrides", [["eval.n_items=4"],
                                       ["data=musique", f"data.path={FIXTURES / 'musique.jsonl'}", "data.source.n_val=2"]])
def test_the_cap_on_training_items_changes_nothing_an_evaluation_uses(overrides):
    """Why solopo-eval refuses data.source.n_train (tests/reliability/test_preflight.py): the held-out questions and
    the passages their long contexts draw from are the same whatever it is (the built-in data builds each split's
    world apart; a file's training items are capped after the split)."""
    capped = [eval_items(load_source(compose_config([*overrides, f"data.source.n_train={n}"])), 4) for n in (1, 3)]
    assert capped[0] == capped[1] == eval_items(load_source(compose_config(overrides)), 4)
