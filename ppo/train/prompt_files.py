"""Local prompt files read line by line, so that a bad byte or line is named by its line.

`datasets` reports an empty file as StopIteration, a file of blank lines as "corresponds
to no data", a non-UTF-8 byte as a UnicodeDecodeError traceback and an invalid JSON line
without its number. JSON-lines files are read here instead (one `json.loads` per line,
which gives the same rows); json, csv and parquet files are only checked here for
emptiness and (text formats) UTF-8 before `datasets` reads them.
"""

from __future__ import annotations

import json
from pathlib import Path

from ppo.errors import ConfigError


class Rows:
    """The two things `read_prompts` asks of a `datasets.Dataset`: column names and a column."""

    def __init__(self, rows: list[dict | None], lines: list[int]):
        self._rows = rows
        self._lines = lines  # the file's line number of each row (blank lines are no rows)
        names: dict[str, None] = {}
        for row in rows:
            names.update(dict.fromkeys(row or {}))
        self.column_names = list(names)

    def __getitem__(self, field: str) -> list:
        # A skipped (unreadable) line reads as a row without the field: counted as a bad row.
        return [(row or {}).get(field) for row in self._rows]

    def __len__(self) -> int:
        return len(self._rows)

    def where(self, row: int) -> str:
        """Where row `row` is in the file, for messages: its line."""
        return f"line {self._lines[row]}"


def _empty(path: Path, data: bytes) -> ConfigError:
    what = "is empty" if not data else "holds only blank lines"
    return ConfigError(f"data.path={path} {what}: write one prompt per row, e.g. a JSON line "
                       '{"prompt": "..."}, or point data.path at another file')


def read_jsonl(path: Path, on_bad_row: str) -> Rows:
    """The rows of a JSON-lines file; a blank line is no row (as in `datasets`).

    A line that is not UTF-8, not JSON or not an object stops with its line number and the
    fix, or with data.on_bad_row=skip becomes a row without fields (skipped and counted)."""
    path = Path(path)
    data = path.read_bytes()
    if not data.strip():
        raise _empty(path, data)
    rows: list[dict | None] = []
    lines: list[int] = []
    for number, raw in enumerate(data.split(b"\n"), 1):
        if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]  # a UTF-8 byte order mark
        if not raw.strip():
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            problem, fix = f"not UTF-8 text (byte 0x{raw[err.start]:02x} at column {err.start + 1})", "re-save the file as UTF-8"
        else:
            try:
                value = json.loads(text)
            except ValueError as err:
                problem, fix = f"not valid JSON ({getattr(err, 'msg', err)} at column {getattr(err, 'colno', '?')})", "fix the line"
            else:
                if isinstance(value, dict):
                    rows.append(value)
                    lines.append(number)
                    continue
                problem, fix = f"a JSON {type(value).__name__}, not an object", 'write one object per line, e.g. {"prompt": "..."}'
        if on_bad_row == "skip":
            rows.append(None)
            lines.append(number)
            continue
        raise ConfigError(f"bad row in {path}: line {number} is {problem}; {fix}, or set data.on_bad_row=skip")
    return Rows(rows, lines)


def check_file(path: Path, text: bool) -> None:
    """Refuse an empty (or, for text formats, blank or non-UTF-8) file, naming the line."""
    path = Path(path)
    data = path.read_bytes()
    if not data or (text and not data.strip()):
        raise _empty(path, data)
    if text:
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as err:
            line = data.count(b"\n", 0, err.start) + 1
            raise ConfigError(f"data.path={path}: line {line} is not UTF-8 text (byte 0x{data[err.start]:02x}); "
                              "re-save the file as UTF-8") from None
