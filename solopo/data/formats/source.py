"""Any container of records -> the records one by one, each with its place in the file, for the format modules.

| ``data.path``                                       | read by                            | place in messages |
|-----------------------------------------------------|------------------------------------|-------------------|
| ``.jsonl`` (or ``.json`` not opening with ``[``)    | solopo, line by line               | line N (1-based)  |
| ``.json`` holding one JSON array                    | solopo                             | record N (0-based)|
| ``.parquet``, ``.csv``, ``.arrow``                  | Hugging Face ``datasets``          | row N (0-based)   |
| a ``save_to_disk`` folder (Dataset or DatasetDict)  | ``datasets.load_from_disk``        | row N             |
| a folder of data files (a local dataset repo)       | ``datasets.load_dataset``          | row N             |
| a LLaMA-Factory data folder (``dataset_info.json``) | the file or folder its entry names | as that one       |

JSON text is read by solopo itself: it keeps every value's JSON type and the line of each record, where Arrow would
unify the column types first and lose the row of a type error. The other containers become Arrow tables that are
memory-mapped and read a row at a time, so a large file is not held twice. ``datasets`` works offline on local
files only; its Arrow cache lives under ``$SOLOPO_CACHE/datasets`` (solopo.cache.cache_root), one place to wipe.
``split`` picks a split (default: train, or the only one); ``name`` a dataset's config, or the entry of a
LLaMA-Factory ``dataset_info.json``, whose column mapping comes along as ``Source.mapping``. A file without records
(a CSV file's header alone) is refused by its name, as is a dataset folder's split of such files, which datasets
would answer for every split of the folder without naming one.
"""
from __future__ import annotations

import contextlib
import csv
import functools
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

from solopo.cache import cache_root, digest
from solopo.data.formats import llama_factory
from solopo.records import DataFileError, Where, checked_path, iter_jsonl, read_json_list

log = logging.getLogger(__name__)
ARROW_SUFFIXES = {".parquet": "parquet", ".csv": "csv", ".arrow": "arrow"}
JSON_SUFFIXES = (".json", ".jsonl")
DATA_SUFFIXES = (*JSON_SUFFIXES, *ARROW_SUFFIXES)
SAVED_MARKERS = ("state.json", "dataset_dict.json")  # what Dataset(Dict).save_to_disk writes
LLAMA_FACTORY_INDEX = "dataset_info.json"


@dataclass(frozen=True)
class Source:
    """The records of one container; ``mapping`` is a LLaMA-Factory dataset entry (columns, tags, formatting)."""

    records: Iterator[tuple[Where, dict]]
    mapping: Optional[dict] = None


def open_source(path: str, split: Optional[str] = None, name: Optional[str] = None) -> Source:
    """The records of ``path``, whichever container it is (see the table above)."""
    if Path(path).name == LLAMA_FACTORY_INDEX:  # the index named instead of its folder
        path = str(Path(path).parent)
    if not os.path.isdir(checked_path(str(path), folder=True)):
        refuse_file_options(str(path), split, name)
        return Source(_file_records(str(path), split), _mapping_beside(Path(path)))
    folder = Path(path)
    if any((folder / marker).is_file() for marker in SAVED_MARKERS):
        with _one_line(path):
            saved = _datasets().load_from_disk(str(folder))
        return Source(_rows(str(path), _pick_split(saved, split, path)))
    entries = _llama_factory_index(folder)
    if entries is not None and any("file_name" in entry for entry in entries.values()):
        entry = _entry(entries, name, folder)
        target, split = folder / entry["file_name"], split or entry.get("split")
        if target.is_dir():  # "the name of the dataset folder or dataset file"; its "subset" is the config
            return Source(open_source(str(target), split, entry.get("subset")).records, entry)
        return Source(_file_records(str(target), split), entry)
    _check_data_files(folder, path)
    folder = folder.resolve()  # datasets names a dataset after its folder, and "." names none
    with _one_line(path):  # the files its configs (README.md) or file names give, as datasets resolves them
        builder = _datasets().load_dataset_builder(str(folder), name=name, cache_dir=str(cache_root() / "datasets"))
    _refuse_empty_splits(builder.config.data_files)
    files = [str(file) for files in builder.config.data_files.values() for file in files]  # train's first
    options = _csv_options(files) if builder.name == "csv" else {}  # a folder of CSV files read as one CSV file is
    return Source(_rows(str(path), _load_dataset(str(folder), path, split, name=name, cache=_folder_cache(files),
                                                 **options)))


def _check_data_files(folder: Path, path: str) -> None:
    """A folder with no data file is refused in one line saying what it looks for: datasets' own answer for it
    ("dataset_name should be specified") names nothing. Hidden files are skipped, as datasets skips them, and so are
    the run folders solopo writes (one holding Hydra's .hydra, e.g. outputs/DATE/TIME of data.path=. run where its
    data lies): their results.json is no data. A run folder beside data files is refused too, as datasets would read
    its JSON files as records."""
    found = [file.relative_to(folder) for file in folder.rglob("*") if file.is_file()
             and file.suffix.lower() in DATA_SUFFIXES]
    found = [file for file in found if not any(part.startswith(".") for part in file.parts)]
    runs = sorted({parent for file in found for parent in file.parents if (folder / parent / ".hydra").is_dir()})
    in_runs = [file for file in found if any(run in file.parents for run in runs)]
    named = f"{runs[0]}{', ...' if len(runs) > 1 else ''}" if runs else ""
    skipped = f" ({len(runs)} run folder{'s' if len(runs) > 1 else ''} skipped: {named})" if runs else ""
    if len(in_runs) == len(found):
        raise DataFileError(f"{path}: holds no data file the formats read{skipped}: it looks for data files "
                            f"({', '.join(DATA_SUFFIXES)}), save_to_disk files ({', '.join(SAVED_MARKERS)}) or a "
                            f"LLaMA-Factory {LLAMA_FACTORY_INDEX}")
    if runs:
        raise DataFileError(f"{path}: holds solopo run folders ({named}) beside its data files, whose JSON "
                            "files would be read as records; give data.path the data's own folder or file")


def _folder_cache(files: list[str]) -> Path:
    """The Arrow cache of a dataset folder, keyed by its files' sizes and modification times: datasets keys that of a
    folder whose README lists its configs by the patterns alone, so an edited file was read back as its old rows."""
    stamp = digest(*[(file, os.stat(file).st_size, os.stat(file).st_mtime_ns) for file in sorted(files)])
    return cache_root() / "datasets" / "folders" / stamp[:16]


def refuse_file_options(path: str, split: Optional[str], name: Optional[str]) -> None:
    """One file has no configs, and a JSON file no splits but its one (train; a CSV, Parquet or Arrow file's split is
    checked as the dataset loads it): a data.name or data.split it cannot honour is refused, not ignored."""
    if name is not None:
        raise DataFileError(f"{path}: one file, with no configs; data.name={name} picks one of a dataset folder or a "
                            "LLaMA-Factory folder's datasets")
    if split not in (None, "train") and Path(path).suffix.lower() in JSON_SUFFIXES:
        raise DataFileError(f"{path}: one file, whose records are one split (train); data.split={split} names none")


def _file_records(path: str, split: Optional[str]) -> Iterator[tuple[Where, dict]]:
    suffix = Path(path).suffix.lower()
    if suffix in ARROW_SUFFIXES and (empty := _emptiness(checked_path(path))) is not None:  # datasets: 'Instruction
        raise DataFileError(f"{path}: no records ({empty})")  # "train" corresponds to no data!', naming no file
    if suffix in ARROW_SUFFIXES:
        options = _csv_options([path]) if suffix == ".csv" else {}
        return _rows(path, _load_dataset(ARROW_SUFFIXES[suffix], path, split, data_files=checked_path(path), **options))
    if suffix not in JSON_SUFFIXES:
        raise DataFileError(f"{path}: unknown kind of file; expected .jsonl, .json, .parquet, .csv, .arrow or a "
                            "dataset folder")
    return iter(read_json_list(path)) if suffix == ".json" and _first_characters(checked_path(path), 1) == "[" else iter_jsonl(path)


def _csv_options(files: list) -> dict:
    """CSV files' cells as the text they hold, every column a string: pandas would read a column of answers "1",
    "10" as integers and the text NA or None as a missing value, and an id column with one empty cell as floats.
    The files of a folder share one header."""
    headers = {str(file): _csv_header(str(file)) for file in files}
    first, header = next(iter(headers.items()))
    for other, columns in headers.items():
        if columns != header:
            order = " (the same in another order)" if sorted(columns) == sorted(header) else ""
            raise DataFileError(f"{other}: its columns ({', '.join(columns)}) are not those of {first} "
                                f"({', '.join(header)}){order}; the CSV files of one dataset share a header")
    datasets = _datasets()
    return dict(features=datasets.Features({name: datasets.Value("string") for name in header}), keep_default_na=False)


def _csv_header(path: str) -> list[str]:
    try:
        with open(checked_path(path), newline="", encoding="utf-8-sig") as file:
            header = next(csv.reader(file), [])
    except (UnicodeDecodeError, csv.Error) as err:
        raise DataFileError(f"{path}: not a dataset that can be read ({err})") from None
    if not header:
        raise DataFileError(f"{path}: empty: a CSV file opens with its header (the column names)")
    return header


def _refuse_empty_splits(data_files: dict) -> None:
    """datasets cannot build a dataset folder in which one split holds no rows (a CSV file with its header alone, an
    empty JSON Lines file), whichever split is asked for, and its message names no file; such a split is refused here,
    naming its file. A split of several files with rows in one of them loads."""
    for split, files in data_files.items():
        found = [(str(file), _emptiness(str(file))) for file in files]
        if found and all(empty is not None for _, empty in found):
            file, empty = found[0]
            more = f" (and its {len(found) - 1} other files)" if len(found) > 1 else ""
            raise DataFileError(f"{file}{more}: no records ({empty}), so the dataset folder's {split} split is empty; "
                                "give it rows or remove it")


def _emptiness(path: str) -> Optional[str]:
    """What a data file holds instead of records ("a header and no rows"), or None where it holds some or is a kind
    read only by datasets (which then says what is wrong with it)."""
    suffix = Path(path).suffix.lower()
    if suffix == ".csv":
        with open(path, newline="", encoding="utf-8-sig", errors="replace") as file:
            rows = csv.reader(file)
            if next(rows, None) is not None and not any(row for row in rows):  # pandas skips blank lines too
                return "a header and no rows"
    elif suffix in JSON_SUFFIXES and (head := _first_characters(path, 2)) in ("", "[]"):
        return "an empty array" if head else "an empty file"
    elif suffix == ".parquet":
        import pyarrow.parquet

        with contextlib.suppress(Exception):  # not a Parquet file: datasets' own message
            return None if pyarrow.parquet.read_metadata(path).num_rows else "a table of 0 rows"
    return None


def _first_characters(path: str, n: int) -> str:
    """The first ``n`` characters of a text file other than whitespace, read a block at a time up to them."""
    seen = ""
    with open(path, "rb") as file:
        while len(seen) < n and (block := file.read(1 << 16)):
            seen += "".join(block.decode("utf-8-sig", errors="replace").split())
    return seen[:n]


def _rows(path: str, dataset) -> Iterator[tuple[Where, dict]]:
    """Rows of an Arrow-backed dataset, read one at a time from the memory map."""
    if len(dataset) == 0:
        raise DataFileError(f"{path}: no records")
    null = "empty" if getattr(dataset.info, "builder_name", None) == "csv" else "is null"  # a CSV file or folder's
    for index, row in enumerate(dataset):
        yield Where(path, f"row {index}", null=null), row


@functools.lru_cache(maxsize=None)
def _datasets():
    # Local files only: nothing in the loading layer may reach a hub. Once: _one_line raises the verbosity meanwhile.
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import datasets

    datasets.logging.set_verbosity_error()  # its progress bars and notes would bury the run's own log
    datasets.disable_progress_bars()
    return datasets


def _load_dataset(builder: str, path: str, split: Optional[str], cache: Optional[Path] = None, **options: Any):
    """``datasets.load_dataset`` on local data, its split picked; its Arrow copy under ``cache``."""
    with _one_line(path):
        loaded = _datasets().load_dataset(builder, cache_dir=str(cache or cache_root() / "datasets"), **options)
    return _pick_split(loaded, split, path)


@contextlib.contextmanager
def _one_line(path: str) -> Iterator[None]:
    """datasets' failures (Arrow's, pandas', its own: many kinds) as one line naming ``path``; the records its loaders
    log at ERROR on the way (the Parquet reader's "Failed to read schema") are held back, as the line says it all."""
    logger = logging.getLogger(_datasets().logging.get_logger().name)
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    except Exception as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataFileError(f"{path}: not a dataset that can be read ({reason})") from None
    finally:
        logger.setLevel(level)


def _pick_split(loaded, split: Optional[str], path: str):
    """One split of a DatasetDict: ``split``, else train, else the only one."""
    if not hasattr(loaded, "keys"):
        return loaded
    names = list(loaded.keys())
    chosen = split or ("train" if "train" in names or len(names) != 1 else names[0])
    if chosen not in names:
        raise DataFileError(f"{path}: no split {chosen!r}; set data.split to one of {', '.join(names)}")
    if others := [name for name in names if name != chosen]:  # TRL's users pass ds["test"] as eval_dataset themselves
        log.info("%s: reading its %s split; its %s split%s not read (validation comes from %s: data.source.n_val)",
                 path, chosen, ", ".join(others), "s are" if len(others) > 1 else " is", chosen)
    return loaded[chosen]


def _llama_factory_index(folder: Path) -> Optional[dict]:
    """The entries of a LLaMA-Factory ``dataset_info.json`` ({name: {file_name, columns, ...}}), or None."""
    index = folder / LLAMA_FACTORY_INDEX
    if not index.is_file():
        return None
    try:
        entries = json.loads(index.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataFileError(f"{index}: not a JSON object of datasets ({err})") from None
    if not (isinstance(entries, dict) and entries and all(isinstance(e, dict) for e in entries.values())):
        raise DataFileError(f"{index}: expected an object of datasets, each {{\"file_name\": ..., \"columns\": ...}}")
    return entries


def _entry(entries: dict, name: Optional[str], folder: Path) -> dict:
    local = {key: entry for key, entry in entries.items() if "file_name" in entry}
    if name is None and len(local) == 1:
        name = next(iter(local))
    choices = f"its datasets with a file_name: {', '.join(local) or '(none)'}"
    if name is None:
        raise DataFileError(f"{folder / LLAMA_FACTORY_INDEX}: set data.name to one of {choices}")
    if name not in local:
        what = "an entry without a file_name (local files only) in" if name in entries else "not an entry of"
        raise DataFileError(f"data.name={name}: {what} {folder / LLAMA_FACTORY_INDEX}; {choices}")
    return _checked_entry(local[name], name, folder / LLAMA_FACTORY_INDEX)


def _checked_entry(entry: dict, name: str, index: Path) -> dict:
    if problem := llama_factory.entry_problem(entry):
        raise DataFileError(f"{index}: dataset {name!r}: {problem}")
    return entry


def _mapping_beside(file: Path) -> Optional[dict]:
    """The LLaMA-Factory entry that a ``dataset_info.json`` beside ``file`` gives it, if any."""
    try:
        entries = _llama_factory_index(file.parent)
    except DataFileError:  # another tool's dataset_info.json: not a mapping for this file
        return None
    matches = [(name, entry) for name, entry in (entries or {}).items() if entry.get("file_name") == file.name]
    return _checked_entry(matches[0][1], matches[0][0], file.parent / LLAMA_FACTORY_INDEX) if matches else None
