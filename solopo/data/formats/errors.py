"""The error a malformed data file raises, and the place in the file it points to."""
from __future__ import annotations

from dataclasses import dataclass, replace


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

    def label(self, name: str) -> str:
        return f"{self.parent}.{name}" if self.parent else name

    def inside(self, name: str) -> Where:
        return replace(self, parent=self.label(name))

    def error(self, problem: str, field: str | None = None) -> DataFileError:
        located = f"{self.path} {self.place}" + (f": field {field!r}" if field else "")
        return DataFileError(f"{located}: {problem}")
