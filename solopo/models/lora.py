"""model.lora checked before anything loads, and its target modules against the model once it has: peft takes its
fields as keyword arguments (a near miss, ``alpha`` for ``lora_alpha``, is a TypeError traceback after the model
loaded), refuses r=0 with a ValueError traceback, and trains the modules of a target list that exist, ignoring a
misspelt one (``[q_proj, v_prj]`` trains q_proj alone, in silence)."""
from __future__ import annotations

import dataclasses
import difflib
from typing import Any, Iterable, Optional

import torch

from solopo.settings.fields import Problems, number, shown

SET_BY_SOLOPO = ("task_type",)  # a causal LM's adapter, always


def lora_problems(lora: Optional[dict[str, Any]]) -> Problems:
    """The fields of ``lora`` that peft's LoraConfig does not have, and r, lora_alpha and lora_dropout out of range."""
    if lora is None:
        return []
    if not isinstance(lora, dict):
        return [f"lora={shown(lora)}: must be peft LoraConfig fields, e.g. {{r: 16, lora_alpha: 32}}, or null"]
    from peft import LoraConfig

    fields = [field.name for field in dataclasses.fields(LoraConfig) if field.name not in SET_BY_SOLOPO]
    problems = []
    for name in [name for name in lora if name not in fields]:
        close = difflib.get_close_matches(str(name), fields, n=1, cutoff=0.5)
        problems.append(f"lora.{name}: peft's LoraConfig has no such field" + (f"; did you mean {close[0]}?"
                                                                              if close else ""))
    ranges = {"r": dict(low=1, integer=True), "lora_alpha": dict(low=0, above=True),
              "lora_dropout": dict(low=0, high=1)}
    return problems + [problem for name, bounds in ranges.items() if name in lora  # peft's defaults are in range
                       for problem in number(f"lora.{name}", lora[name], **bounds)]


def unmatched_targets(module_names: Iterable[str], lora: dict[str, Any]) -> list[str]:
    """The names of a target_modules list that match no module (peft matches a name or a name's last parts); a
    string (a regex, or "all-linear", the default) is peft's to match."""
    targets = lora.get("target_modules")
    if not isinstance(targets, (list, tuple)):
        return []
    names = list(module_names)
    return [target for target in targets
            if not any(name == target or name.endswith("." + target) for name in names)]


def linear_names(model: torch.nn.Module) -> list[str]:
    """The last parts of the names of a model's linear layers (q_proj, ..., lm_head): what a target list names."""
    return sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                   if isinstance(module, torch.nn.Linear)})
