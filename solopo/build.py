"""Build SoLoPO triplets from short-context preference data, from the Hydra config conf/build.yaml.

    python -m solopo.build input.path=short_pairs.jsonl corpus.path=passages.parquet long_len=4096 output=triplets.jsonl
    python -m solopo.run data=pairs data.path=triplets.jsonl

Hydra rather than argparse: long_len is counted with the tokenizer of the model to be trained, so the builder composes
the same model group as solopo.run (model=qwen2_5_7b, model.name=PATH), and --help lists every option with its
comment. What a triplet is: solopo.data.build. The tokenizer's and the settings' modules (torch, transformers) are
imported inside the functions, so that --help answers before they load.
"""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import hydra
from omegaconf import DictConfig, OmegaConf

from solopo.data.build import BuildSettings, CorpusSettings, InputSettings
from solopo.settings.fields import SettingsError

log = logging.getLogger("solopo")
if TYPE_CHECKING:
    from solopo.models.loading import ModelSpec
TOP_KEYS = ("output", "long_len", "depths", "seed")  # the config's own keys, which BuildSettings holds
BUILD_KEYS = ("model", "input", "corpus", *TOP_KEYS)  # every key of conf/build.yaml


def settings_of(cfg: DictConfig) -> tuple[ModelSpec, InputSettings, CorpusSettings, BuildSettings]:
    """The typed settings, or one ConfigError naming every mistake."""
    from solopo.models.loading import ModelSpec
    from solopo.settings.build import ConfigError, built, plain
    from solopo.settings.groups import unknown_options
    from solopo.settings.keys import unread

    given = {k: v for k, v in OmegaConf.to_container(cfg).items() if k != "hydra"}
    problems = unread("", given, BUILD_KEYS, "solopo-build", others=False)
    missing = [name for name, node, key in (("input.path", cfg.input, "path"), ("output", cfg, "output"))
               if OmegaConf.is_missing(node, key)]
    if missing:  # with the unknown keys alone (outptu=... meant output): the other checks would read "???" as a path
        problems += [problem for group, make in (("input", InputSettings), ("corpus", CorpusSettings))
                     for problem in unknown_options(group, make, plain(cfg, group))]  # input.pth=... meant input.path
        missing_text = f"{' and '.join(f'{name}=...' for name in missing)} mandatory: see solopo-build --help"
        raise ConfigError("; ".join([*problems, missing_text]))
    made = (built("model", ModelSpec, plain(cfg, "model"), problems),
            built("input", InputSettings, plain(cfg, "input"), problems),
            built("corpus", CorpusSettings, plain(cfg, "corpus"), problems))
    top = {key: OmegaConf.to_container(cfg[key], resolve=True) if OmegaConf.is_config(cfg[key]) else cfg[key]
           for key in TOP_KEYS}
    try:
        settings = BuildSettings(**top)
    except SettingsError as err:
        problems += err.problems
    if not problems:  # a cross-group rule: the output against the files read
        problems += overwritten(settings.output, {"input.path": made[1].path, "corpus.path": made[2].path})
    if problems:
        raise ConfigError("; ".join(problems))
    return (*made, settings)


def overwritten(output: str, read: dict[str, Optional[str]]) -> list[str]:
    """The build writes its output only after reading its input whole, so an output naming a file it reads would
    replace the source pairs (or corpus) with the triplets: refused, the file however spelled (relative, absolute,
    through a symlink or a hard link)."""
    target = Path(output).resolve()
    problems = []
    for key, path in read.items():
        if path is not None and (Path(path).resolve() == target
                                 or (target.exists() and Path(path).exists() and target.samefile(path))):
            problems.append(f"output={output}: is {key} ({path}), which the build reads; write the triplets to "
                            "another file")
    return problems


def build(cfg: DictConfig) -> None:
    from tqdm import tqdm

    from solopo.cache import atomic_file
    from solopo.data.build import other_contexts, read_corpus, read_input, triplets
    from solopo.data.tokenize import token_counter
    from solopo.models.loading import load_tokenizer
    from solopo.records import DataFileError
    from solopo.settings.build import ConfigError

    model, given, corpus, settings = settings_of(cfg)  # a mistake stops here, in one line, before any file is read
    try:
        records = read_input(given)
        pool, blank = read_corpus(corpus) if corpus.path else (other_contexts(records), 0)
        count_tokens = token_counter(load_tokenizer(model))
        with atomic_file(Path(settings.output)) as out:  # a failed build leaves no half-written file
            for record in tqdm(triplets(records, pool, count_tokens, settings), total=len(records), desc="triplets",
                              disable=None):  # None: a bar on a terminal only, not in a log file
                out.write(json.dumps(record, ensure_ascii=False) + "\n")
    except (DataFileError, OSError) as err:
        raise ConfigError(str(err)) from None
    source = f"{corpus.path} ({blank} blank rows skipped)" if corpus.path else "the other records' contexts"
    log.info("wrote %d triplets, x_long of %d tokens, to %s; distractors: %d passages of %s", len(records),
             settings.long_len, settings.output, len(pool), source)


@hydra.main(version_base="1.3", config_path="conf", config_name="build")
def main(cfg: DictConfig) -> None:
    from solopo.settings.build import stop_on_config_errors

    with stop_on_config_errors():
        build(cfg)


def entry() -> None:
    """The console script solopo-build (and python -m solopo.build): the command line's preflight checks and its
    values, each mistake in one line (a key the config lacks included, which Hydra refuses in six), then Hydra."""
    from solopo.job_checks import configs_checked
    from solopo.preflight import preflight

    preflight(sys.argv[1:], run_dir=False)  # conf/build.yaml: Hydra writes no run directory
    with configs_checked(sys.argv[1:], "build", problem):  # before Hydra, or after it printed the config (--cfg job)
        main()


def problem(cfg: DictConfig) -> Optional[str]:
    """settings_of's one line for ``cfg``, or None where it has no mistake."""
    from solopo.settings.build import ConfigError

    try:
        settings_of(cfg)
    except ConfigError as err:
        return str(err)
    return None


if __name__ == "__main__":
    entry()
