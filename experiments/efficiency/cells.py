"""What one benchmark cell trains (bench.py, profile_step.py, trl_bench.py, fsdp_bench.py, cp_bench.py): the methods
and algorithms, the model build (model_spec; for the defaults variant a run's own weights' dtype and precision), the
variants (how a step's sequences reach the model: layout, attention kernel, model options), the pair and the step."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from common import DEVICE, logp_chunk_size, random_ids, shape_model, shipped
from solopo.core.algos import DPO, SimPO
from solopo.core.objective import Method, SoLoRA, required_sequences
from solopo.data.collate import PairCollator
from solopo.data.tokenize import TokenizedPair
from solopo.models.loading import ModelSpec, load_model
from solopo.step.batch import Batch
from solopo.training.module import OptimSettings, SoLoPOModule
from solopo.training.precision import autocast, resolve_precision

SOLOPO, RA = Method(**shipped("method")), SoLoRA(**shipped("ra"))  # the defaults: method=solopo, ra=chosen (alpha 1)
METHODS = {
    "solopo": (SOLOPO, RA),
    "solopo_both": (SOLOPO, dataclasses.replace(RA, responses=("chosen", "rejected"))),
    "long_po": (Method(name="long_po", po_context="long", pairs_from="long", use_ra=False),
                dataclasses.replace(RA, alpha=0.0)),
}
ALGOS = {"dpo": DPO(beta=0.1), "simpo": SimPO(beta=2.0, gamma=1.0)}
DEFAULTS, BEST = "defaults", "best"  # BEST: per cell, the fastest variant the committed tables measured (best_variant)
# How the sequences of a step reach the model: padded = one padded batch per context (SDPA); packed-* = every
# sequence of the step in one row without padding, attention kept within each sequence by the named kernel.
VARIANTS = {"padded": ("sdpa", False), "packed-flex": ("flex_attention", True), "packed-sdpa": ("sdpa", True),
            "packed-varlen": ("solopo_varlen", True), "shared-flex": ("flex_attention", "shared_prompt"),
            "shared-varlen": ("solopo_varlen", "shared_prompt"),  # torch's varlen kernel, the prompt's keys gathered
            "shared-sdpa": ("sdpa", "shared_prompt"),  # shared-sdpa builds a dense T x T mask: short contexts only
            # padded rows through other kernels: SDPA's cuDNN backend instead of its flash kernel, and the model
            # options of MODEL_OPTIONS below
            "cudnn-sdpa": ("sdpa", False), "liger": ("sdpa", False), "compile": ("sdpa", False),
            "savers": ("sdpa", False),
            # what a run gets without flags: the shipped kernel, packing=auto, model.gradient_checkpointing=auto
            DEFAULTS: (shipped("model")["attn_implementation"], shipped("packing"))}
# Every other variant checkpoints every decoder layer, as the committed tables were measured.
# The model options a variant loads the model with (solopo.models.kernels and .memory) over model_spec's plain model;
# one call measures variants of one model build (padded and cudnn-sdpa share the plain one). savers: chunks of 16K
# positions keep each MLP's intermediate at 16K x 8960 values (1.5B shape), whatever the context, in matrix products
# still large enough to run at full speed; every layer's input waits in host memory. defaults: the shipped
# model.liger (auto: Liger's kernels where they run).
MODEL_OPTIONS = {"liger": {"liger": True}, "compile": {"compile": True},
                 "savers": {"mlp_chunk_size": 16384, "offload_activations": True},
                 DEFAULTS: {"liger": shipped("model")["liger"]}}


def model_spec(name: str) -> ModelSpec:
    """The plain model of the committed tables: bf16 weights, every layer checkpointed, no Liger (model.liger's default,
    auto, would turn it on wherever liger-kernel imports, in every variant's cells)."""
    common = dict(tokenizer="embedded:smollm2-135m-instruct", dtype="bfloat16", gradient_checkpointing=True,
                  max_length=1 << 21, liger=False)
    if name == "smollm2":
        return ModelSpec(**{**shipped("model"), **common})
    return ModelSpec(**{**shape_model(name), **common})  # random weights drawn where the shape's preset says: the GPU


def run_build(name: str, spec: ModelSpec) -> ModelSpec:
    """``spec`` in the weights' dtype a run without flags loads the model in (the shapes' presets: fp32 master weights,
    trained under bf16-mixed), for the defaults variant."""
    preset = shipped("model") if spec.random_init is None else shape_model(name)
    return dataclasses.replace(spec, dtype=preset["dtype"])


def call_spec(name: str, options: dict, variants: list[str]) -> ModelSpec:
    """The model one call measures: model_spec's with the variants' options, and for the defaults a run's weights'
    dtype (grid and longest add its precision: variant_precision)."""
    spec = dataclasses.replace(model_spec(name), **options)
    return run_build(name, spec) if DEFAULTS in variants else spec


def run_precision() -> str:
    """trainer.precision as a run without flags resolves it here (auto: bf16-mixed on a GPU with bf16)."""
    return resolve_precision(shipped("trainer")["precision"])


def variant_precision(variant: str) -> str:
    """The forward's precision in ``variant``: a run's for the defaults (autocast over its fp32 weights), none for
    the others, whose weights are bf16 (model_spec), as the committed tables were measured."""
    return run_precision() if variant == DEFAULTS else "32-true"


def load_policy(spec: ModelSpec, tokenizer):
    """The model on the benchmark's device; random weights are initialised there (on the GPU about a minute less per
    1.5B model than on the CPU), real ones load on the CPU first."""
    with torch.device(DEVICE if spec.random_init else "cpu"):
        return load_model(spec, tokenizer).to(DEVICE)


def make_pair(short: int, long: int, response: int, seed: int = 0) -> TokenizedPair:
    g = torch.Generator().manual_seed(seed)
    responses = {"chosen": random_ids(response, g), "rejected": random_ids(response, g)}
    ref = {f"{c}/{r}": -50.0 for c in ("short", "long") for r in ("chosen", "rejected")}
    return TokenizedPair("bench", {"short": random_ids(short - response, g), "long": random_ids(long - response, g)},
                         responses, ref_logps=ref)


def model_options(variants: list[str]) -> dict:
    """The ModelSpec fields that the model of a call measuring ``variants`` loads with."""
    builds = {tuple(sorted(MODEL_OPTIONS.get(variant, {}).items())) for variant in variants}
    if len(builds) > 1:
        raise SystemExit(f"--variants {','.join(variants)}: these load the model with different options "
                         f"({', '.join(v for v in variants if v in MODEL_OPTIONS)}); measure them in separate calls")
    return MODEL_OPTIONS.get(variants[0], {}) if variants else {}


def use_sdpa_backend(variant: str) -> None:
    """cudnn-sdpa: SDPA may use its cuDNN kernel only (a case it cannot run fails the cell); otherwise every backend,
    in torch's order (flash first)."""
    cudnn_only = variant == "cudnn-sdpa"
    torch.backends.cuda.enable_flash_sdp(not cudnn_only)
    torch.backends.cuda.enable_mem_efficient_sdp(not cudnn_only)
    torch.backends.cuda.enable_math_sdp(not cudnn_only)
    torch.backends.cuda.enable_cudnn_sdp(True)


def use_variant(policy, variant: str) -> bool | str:
    """Switch the policy's attention kernel for ``variant``; returns how its sequences are packed (PairCollator's
    ``pack``)."""
    attention, pack = VARIANTS[variant]
    use_sdpa_backend(variant)
    if policy.config._attn_implementation != attention:
        policy.set_attn_implementation(attention)  # the same weights, another attention kernel
    return pack


@dataclass
class TrainStep:
    """One optimizer step of solopo's training code on a fixed batch (on the GPU), callable."""

    module: SoLoPOModule
    optimizer: torch.optim.Optimizer
    batch: Batch
    precision: str = "32-true"  # the forward's autocast, as Lightning's precision plugin has it

    def __call__(self) -> None:
        with autocast(torch.device(DEVICE), self.precision):
            loss = self.module.objective(self.batch).loss
        # Lightning's order (its closure: training_step, zero_grad, backward): the forward holds the previous step's
        # gradients, as a run's does, and the measured peak is a run's.
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()


def train_step(policy, optimizer, algo, method_name: str, pair: TokenizedPair, pad_id: int,
               pack: bool | str = False, precision: str = "32-true"):
    """The step of one cell, its sequences, its tokens and its layout (packing=auto: the one chosen)."""
    method, ra = METHODS[method_name]
    keys = required_sequences(method, ra)
    collate = PairCollator(keys, pad_id, pack=pack, device=DEVICE, kernel=policy.config._attn_implementation)
    layout = collate.layout_of([pair])
    batch = collate([pair]).to(DEVICE)
    # optim: the run's settings, which this module never uses: TrainStep steps the bench's own AdamW
    module = SoLoPOModule(policy, algo, ra, method, cached_reference=True, optim=OptimSettings(**shipped("optim")),
                          logp_chunk_size=logp_chunk_size())
    return TrainStep(module, optimizer, batch, precision), keys, batch.n_tokens, layout
