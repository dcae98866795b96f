"""Records of user files and their place in the file: jsonl and JSON-list files read record by record, each field
checked against the JSON type a format expects, and the one error a malformed file raises (``DataFileError``,
"FILE line 3: field 'paragraphs': expected a list, got str"). Shared by the training data's formats
(solopo.data.formats), the benchmarks' readers (solopo.eval.longbench, solopo.eval.ruler) and the checks that stop on
a bad file, so that neither eval/ nor data/ reaches into the other's readers for it."""
from __future__ import annotations

import errno
import json
import os
from dataclasses import dataclass, replace
from typing import Any, Iterable, Iterator

class DataFileError(ValueError):
    """A data file that cannot be used as it is: "FILE line 3: field 'paragraphs': expected a list, got str"."""


@dataclass(frozen=True)
class Where:
    """A record's place: "line 3" in jsonl (1-based, as editors count), "record 2" in a JSON list (0-based, as
    jq '.[2]' finds it) or "row 2" in an Arrow-backed container (0-based, as dataset[2] finds it); ``parent`` names
    the enclosing field of a nested object."""

    path: str
    place: str
    parent: str = ""
    null: str = "is null"  # how a null value reads in this file: "empty" for a CSV's empty cell (a CSV has no null)

    def label(self, name: str) -> str:
        return f"{self.parent}.{name}" if self.parent else name

    def inside(self, name: str) -> Where:
        return replace(self, parent=self.label(name))

    def error(self, problem: str, field: str | None = None) -> DataFileError:
        located = f"{self.path} {self.place}" + (f": field {field!r}" if field else "")
        return DataFileError(f"{located}: {problem}")


REQUIRED = object()  # the default of a field that must be present
_EXPECTED = {str: "a string", list: "a list", dict: "an object", bool: "true or false", int: "an integer"}


def type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def checked_path(path: str, folder: bool = False) -> str:
    """``path`` if it names a readable file (a folder with ``folder``), else one line saying what it is instead."""
    try:
        is_folder = os.path.isdir(os.path.realpath(path, strict=True))
    except OSError as err:  # missing, a symlink loop, no permission
        reason = {errno.ENOENT: "no such file", errno.ELOOP: "a symlink loop"}.get(err.errno, err.strerror)
        raise DataFileError(f"{path}: cannot read it: {reason}") from None
    if is_folder and not folder:
        raise DataFileError(f"{path}: a folder, not a file of records")
    return path


def read_jsonl(path: str) -> list[tuple[Where, dict]]:
    """One JSON object per line; blank lines are skipped but counted, so line numbers match an editor's."""
    return _non_empty(list(iter_jsonl(path)), path)


def iter_jsonl(path: str) -> Iterator[tuple[Where, dict]]:
    """The records of a jsonl file one by one, so a large file is never held whole."""
    # Decoded line by line, so a bad encoding is reported with its line too.
    with open(checked_path(path), "rb") as lines:
        for number, raw in enumerate(lines, start=1):
            where = Where(path, f"line {number}")
            try:
                line = raw.decode("utf-8-sig")
            except UnicodeDecodeError as err:
                raise where.error(f"not UTF-8 text ({err.reason})") from None
            if line.strip():  # parsed without its line break, which an unclosed record's error would point at
                yield where, _object(_parsed(line.rstrip("\r\n"), path, number), where)


def _parsed(text: str, path: str, line: int | None = None) -> Any:
    """JSON text: one line of a jsonl file (``line``), or a whole file, whose errors are placed by the parser."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise Where(path, f"line {line or err.lineno}").error(f"invalid JSON: {err.msg} (column {err.colno})") from None
    except RecursionError:  # Python's parser recurses once per level of nesting
        located = f"{path} line {line}" if line else path
        raise DataFileError(f"{located}: invalid JSON: nested too deeply") from None


def read_json_list(path: str) -> list[tuple[Where, dict]]:
    """The records of a file holding one JSON list of objects."""
    try:
        with open(checked_path(path), encoding="utf-8-sig") as file:
            content = file.read()
    except UnicodeDecodeError as err:
        raise DataFileError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    data = _parsed(content, path)
    if not isinstance(data, list):
        raise DataFileError(f"{path}: expected a JSON list of records, got {type_name(data)}")
    records = [(Where(path, f"record {index}"), record) for index, record in enumerate(data)]
    return _non_empty([(where, _object(record, where)) for where, record in records], path)


def field(record: dict, name: str, kind: type, where: Where, default: Any = REQUIRED) -> Any:
    """The value of ``name``, checked to be of ``kind``; an absent or null optional field gives ``default``."""
    value = record.get(name)
    if value is None:
        if default is REQUIRED:
            raise where.error(where.null if name in record else "required but missing", where.label(name))
        return default
    return check(value, kind, where.label(name), where)


def required(record: dict, name: str, where: Where) -> Any:
    """The value of ``name``, of any JSON type, which must be present and not null."""
    return field(record, name, object, where)


def check(value: Any, kind: type, label: str, where: Where) -> Any:
    # bool is an int in Python, not in JSON
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise where.error(f"expected {_EXPECTED[kind]}, got {type_name(value)}", label)
    return value


def text(record: dict, name: str, where: Where, strip: bool = True) -> str:
    """A required string field that is not blank; stripped unless ``strip`` is False."""
    return check_text(field(record, name, str, where), where.label(name), where, strip)


def check_text(value: Any, label: str, where: Where, strip: bool = True) -> str:
    """A string that is not blank and that a tokenizer can take: JSON's \\ud83d escape alone (half of a character cut in
    two, as a truncated emoji leaves it) reads as a lone surrogate, which no UTF-8 tokenizer encodes."""
    if not check(value, str, label, where).strip():
        raise where.error("empty", label)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as err:
        raise where.error(f"character {err.start} is half of a character cut in two "
                          f"({value[err.start].encode('unicode_escape').decode()}, a lone surrogate), which no "
                          "tokenizer takes", label) from None
    return value.strip() if strip else value


def text_list(record: dict, name: str, where: Where, required: bool = True) -> list[str]:
    """A list of non-blank strings (stripped); a required one must hold at least one."""
    values = field(record, name, list, where, default=REQUIRED if required else [])
    if required and not values:
        raise where.error("empty list", where.label(name))
    return [check_text(value, f"{where.label(name)}[{index}]", where) for index, value in enumerate(values)]


def check_unique_ids(rows: Iterable[tuple[Where, str]]) -> None:
    """Ids name items in the sample caches, the logs and the evaluation tables, and seed each item's draws, so two
    records of one file must not share one."""
    first: dict[str, Where] = {}
    for where, item_id in rows:
        if item_id in first:
            raise where.error(f"id {item_id!r} is also the id of {first[item_id].place}; ids must be unique "
                              "within a file")
        first[item_id] = where


def _object(record: Any, where: Where) -> dict:
    if not isinstance(record, dict):
        raise where.error(f"expected a JSON object, got {type_name(record)}")
    return record


def _non_empty(records: list, path: str) -> list:
    if not records:
        raise DataFileError(f"{path}: no records")
    return records
