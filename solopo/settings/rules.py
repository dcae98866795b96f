"""The rules that span several config groups: what no single settings object can check alone. Each is a pure
function of plain values that returns its problems under their config keys; ``cross_group_rules`` applies them, with
solopo.settings.keys' checks of the keys the run reads."""
from __future__ import annotations

import difflib
import os
from typing import Any, Iterable, Optional, Sequence

import torch
from omegaconf import DictConfig, OmegaConf

from solopo.core.objective import metric_names
from solopo.data.collate import SHARED_PROMPT
from solopo.settings.fields import Problems, number, shown
from solopo.settings.keys import check_evaluation_overrides, check_unread_keys
from solopo.step import context_parallel, shared_prompt

# x_long holds the evidence (the built-in data's x_short runs to 55-150 tokens) and irrelevant text around it;
# below this there is no room for the irrelevant text, so the long context would teach nothing.
MIN_LONG_LEN = 128
TEMPLATE_TOKENS = 32  # what a chat template adds around the user message (SmolLM2's: 30 tokens)
GOLD_RESPONSE_TOKENS = 32  # gold answers and wrong answers are a few words
EVAL_ROOM = 64  # what solopo.eval.longctx.build_cases keeps free below model.max_length for template and answer


def check_long_len(long_len: Any, short_len: Any, max_length: Optional[int], room: int) -> Problems:
    """data.long_len against data.short_len and model.max_length less ``room`` (chat template and response)."""
    problems = number("data.long_len", long_len, MIN_LONG_LEN, integer=True,
                      note=" (x_long holds the evidence, ~100 tokens, and irrelevant text)")
    if not problems and isinstance(short_len, int) and long_len <= short_len:
        problems.append(f"data.long_len={long_len}: must be greater than data.short_len={short_len} (x_long holds "
                        "x_short and more)")
    if not problems and max_length is not None and long_len + room > max_length:
        problems.append(f"data.long_len={long_len}: too long for model.max_length={max_length}; at most "
                        f"{max_length - room} leaves room for the chat template and the response")
    return problems


FILE_OF_PAIRS = "pairs"  # the data option whose file may hold ready-made pairs or passages (schema A')
COMMAND_LINE = "the command line"  # where a setting was given, beside the files of one's own configs


def check_pairs_long_len(long_len: Any, max_length: Optional[int], passages: bool, given: Optional[str],
                         path: Any) -> Problems:
    """data.long_len for data=pairs, once the file is read: a file of passages (``passages``, schema A') builds x_long
    to it, so it must fit model.max_length as for a QA dataset; ready-made pairs keep their prompts as written, so it
    was checked against model.max_length though nothing read it (a 4K model asked for data.long_len <= 4032 on a file
    whose contexts it never changed), and, ``given`` (COMMAND_LINE, or the file of one's own config that set it),
    would be ignored: refused instead."""
    if passages:
        return check_long_len(long_len, None, max_length, TEMPLATE_TOKENS + GOLD_RESPONSE_TOKENS)
    if given:
        where = "" if given == COMMAND_LINE else f" (set in {given})"
        return [f"data.long_len={long_len}{where}: data.path={path} holds ready-made pairs, whose prompts are used as "
                "written; data.long_len sets the x_long built from passages (schema A') or a QA dataset. To give "
                "pairs x_long of a chosen length, build them: solopo-build"]
    return []


def check_pairs_sampled(pairs: Any, passages: bool, path: Any) -> Problems:
    """data.pairs=sampled for data=pairs, once the file is read: sampling makes pairs from passages (schema A'); a
    file of ready-made pairs was trained on as written, the sampling asked for never run: refused instead."""
    if pairs != "sampled" or passages:
        return []
    return [f"data.pairs=sampled: data.path={path} holds ready-made pairs (a chosen and a rejected response each), "
            "which are trained on as written; sampling makes pairs from passages with answers (schema A') or a QA "
            "dataset. Drop data.pairs=sampled to train on the file's pairs"]


def check_eval_lengths(lengths: Any, max_length: Optional[int]) -> Problems:
    """eval.lengths (EvalSettings checked their form) against model.max_length less the room of an answer."""
    if max_length is None or not isinstance(lengths, (list, tuple)):
        return []
    return [f"eval.lengths={shown(lengths)}: {length} is too long for model.max_length={max_length}; at most "
            f"{max_length - EVAL_ROOM} leaves room for the chat template and the answer"
            for length in lengths if isinstance(length, int) and length + EVAL_ROOM > max_length]


def check_packing_kernel(packing: Any, attn_implementation: Any) -> Problems:
    """Shared prompts need an attention kernel that takes their mask (solopo.step.shared_prompt)."""
    if packing != SHARED_PROMPT or attn_implementation in shared_prompt.KERNELS:
        return []
    return [f"packing={SHARED_PROMPT} needs model.attn_implementation={' or '.join(shared_prompt.KERNELS)} "
            f"(got {shown(attn_implementation)})"]


def check_alignment(method, ra) -> Problems:
    """ra=off (alpha 0) is the one switch of SoLo-RA; a method without the term selects it, so a positive alpha
    with that method (e.g. ra=both method=long_po) would silently change what the method is."""
    if method is None or ra is None or method.use_ra or not ra.active:
        return []
    return [f"ra.alpha={shown(ra.alpha)}: method={method.name} has no SoLo-RA term (its config selects ra=off); "
            "drop the ra setting or choose method=solopo"]


def check_reference(reference: Any, algo) -> Problems:
    """reference=live runs a frozen reference model every step, for an algorithm that needs one; a reference-free
    algorithm (SimPO, ORPO: needs_reference false) loads none, so the setting would change nothing in silence."""
    if reference != "live" or algo is None or algo.needs_reference:
        return []
    return [f"reference=live: {type(algo).__name__} is reference-free (it needs no reference model), so no reference "
            "would run; drop reference=live, or choose an algorithm that uses one (e.g. algo=dpo)"]


def check_benchmark_schedule(benchmark, evaluation) -> Problems:
    """Evaluation during training judges a step by the held-out questions' long-context sub-EM, which a benchmark's
    table (a score per subset) does not have."""
    if benchmark is None or evaluation is None or not evaluation.every_n_steps:
        return []
    return [f"eval.every_n_steps={evaluation.every_n_steps}: evaluation during training uses the held-out questions; "
            "with eval.benchmark the trained model alone is evaluated on it (set eval.every_n_steps=null)"]


def processes(trainer: dict, gpus: int) -> Optional[int]:
    """How many processes the run will have: WORLD_SIZE where a launcher (torchrun, SLURM, Lightning's own) set it,
    else trainer.devices x trainer.num_nodes, "auto" or -1 being every GPU (one process on the CPU); None when
    unknown."""
    if os.environ.get("WORLD_SIZE", "").isdigit():
        return int(os.environ["WORLD_SIZE"])
    devices, nodes = trainer.get("devices"), trainer.get("num_nodes", 1)
    if devices in ("auto", -1):
        devices = gpus if gpus and trainer.get("accelerator") != "cpu" else 1
    count = len(devices) if isinstance(devices, list) else devices
    return count * nodes if isinstance(count, int) and isinstance(nodes, int) else None


def check_context_parallel(size: int, strategy: str, n_processes: Optional[int], packing: Any,
                           attn_implementation: Any) -> Problems:
    """trainer.context_parallel > 1 against the strategy (FSDP's mesh holds the context groups), the processes (it
    must divide them), packing (it splits padded rows: packing=auto picks them under it) and the attention kernel
    (solopo_context, or sdpa / solopo_varlen, which the run replaces with it)."""
    if size == 1:
        return []
    key = f"trainer.context_parallel={size}"
    problems = [] if strategy.endswith("FSDP2Strategy") else [f"{key}: needs trainer=fsdp (its device mesh holds the "
                                                               "context groups)"]
    if n_processes is not None and n_processes % size:
        problems.append(f"{key}: must divide the number of processes, {n_processes} (trainer.devices x trainer.num_nodes)")
    if packing not in (False, "auto"):
        problems.append(f"{key}: splits padded rows; set packing=auto or false (got packing={shown(packing)})")
    if attn_implementation not in context_parallel.REPLACES + (context_parallel.NAME,):
        problems.append(f"{key}: runs model.attn_implementation={context_parallel.NAME} (SDPA over the gathered keys "
                        f"and values, which replaces sdpa and solopo_varlen); got {shown(attn_implementation)}")
    return problems


def check_optimized_metric(metric: Any, algo, ra, method, n_val: Any = None) -> Problems:
    """optimized_metric, where it names a validation metric, against those the objective reports for these settings
    (solopo.core.objective.metric_names) and a validation split asked for (``n_val``, data.source.n_val: 0 asks for
    none), so a typo stops the run before it trains rather than after. The train/ metrics of callbacks are checked as
    the run ends; the evaluation's entries, which depend on the data, by check_eval_metric once the evaluation is
    built."""
    if not (isinstance(metric, str) and metric.startswith("val/")):
        return []
    if n_val == 0:
        return [f"optimized_metric={metric}: data.source.n_val=0 asks for no validation split, so no val/ metric is "
                "reported; keep validation items or name an eval/ metric"]
    if None in (algo, ra, method):
        return []
    names = sorted(f"val/{name}" for name in metric_names(algo, ra, method))
    if metric in names:
        return []
    close = difflib.get_close_matches(metric, names, n=1)
    return [f"optimized_metric={metric}: validation reports no such metric; "
            + (f"did you mean {close[0]}?" if close else f"it reports {', '.join(names)}")]


def check_eval_metric(metric: Any, keys: Optional[set[str]]) -> Problems:
    """optimized_metric, where it names an evaluation entry (eval/...), against the entries this run's evaluation can
    give (RunEvaluation.summary_keys; None: the run evaluates nothing), once the evaluation is built and before the
    model loads, so a typo stops the run before it trains rather than after."""
    if not (isinstance(metric, str) and metric.startswith("eval/")):
        return []
    if keys is None:
        return [f"optimized_metric={metric}: this run evaluates nothing (eval.enabled=false, or the data has no "
                "held-out questions); name a val/ metric"]
    if metric in keys:
        return []
    close = difflib.get_close_matches(metric, sorted(keys), n=1)
    return [f"optimized_metric={metric}: the evaluation gives no such entry; "
            + (f"did you mean {close[0]}?" if close else f"it gives {', '.join(sorted(keys))}")]


def cross_group_rules(cfg: DictConfig, settings: dict, data_option: str, training: bool,
                      overrides: Sequence[str] = (), groups: Iterable[str] = ()) -> Problems:
    """Problems between groups; ``settings`` are the objects built so far (None where a group had a problem);
    ``overrides`` and ``groups``: the command line's and the config's (an evaluation names those it does not read)."""
    model = settings["model"]
    max_length = model.max_length if model is not None else None
    problems = check_unread_keys(cfg, data_option)
    problems += [] if training else check_evaluation_overrides(cfg, overrides, groups)
    if training:
        sampling = settings["sampling"]
        # Beside x_long, a training sequence holds the chat template and the response: a sample, or a gold answer.
        response = sampling.max_new_tokens + 1 if sampling is not None else GOLD_RESPONSE_TOKENS
        if sampling is not None:  # built for data.pairs=sampled only
            problems += number("data.sampling.k", sampling.k, 2, integer=True,
                               note=" (a pair needs a correct and an incorrect sample)")
        if data_option != FILE_OF_PAIRS:  # there it builds x_long for passages alone: check_pairs_long_len
            problems += check_long_len(cfg.data.get("long_len"), cfg.data.get("short_len"), max_length,
                                       TEMPLATE_TOKENS + response)
        problems += check_alignment(settings["method"], settings["ra"])
        problems += check_reference(cfg.get("reference"), settings["algo"])
        problems += check_packing_kernel(cfg.get("packing"), model.attn_implementation if model else None)
        problems += check_benchmark_schedule(settings["benchmark"], settings["eval"])
        problems += check_optimized_metric(cfg.get("optimized_metric"), settings["algo"], settings["ra"],
                                           settings["method"], OmegaConf.select(cfg, "data.source.n_val"))
        if settings["context"] is not None:
            strategy = str(OmegaConf.select(cfg, "trainer.strategy._target_", default=cfg.trainer.get("strategy", "")))
            trainer = OmegaConf.to_container(cfg.trainer, resolve=True)
            problems += check_context_parallel(settings["context"].size, strategy,
                                               processes(trainer, torch.cuda.device_count()), cfg.get("packing"),
                                               model.attn_implementation if model else "sdpa")
    lengths = OmegaConf.select(cfg, "eval.lengths")
    return problems + check_eval_lengths(OmegaConf.to_container(lengths) if OmegaConf.is_config(lengths) else lengths,
                                         max_length)
