"""Crash-safe JSON-lines records (`diagnostics.jsonl`): atomic appends, tolerant reads, repair.

Each record is one line of strict JSON (no NaN). A line is written with a single
``os.write`` on an ``O_APPEND`` descriptor and then fsync'ed, so a crash leaves either the
whole line or (on an older file, or a power cut mid-write) a truncated last line, which
readers drop and `truncate_records` removes.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def append_record(path: str | os.PathLike, record: Mapping[str, Any]) -> None:
    """Append ``record`` as one JSON line to ``path`` (created with its folder if missing).

    The line is encoded first and written in one ``os.write`` call on an ``O_APPEND`` file
    descriptor, then fsync'ed: concurrent readers never see half a record from a live
    writer. Non-finite floats are refused (ValueError) so the file stays strict JSON.
    """
    if not isinstance(record, Mapping):
        raise TypeError(f"record must be a mapping, got {type(record).__name__}")
    try:
        line = json.dumps(record, allow_nan=False, separators=(",", ":")) + "\n"
    except ValueError as exc:
        raise ValueError(f"record: not strict JSON (NaN or infinity inside): {exc}") from None
    data = line.encode("utf-8")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        written = os.write(fd, data)
        # A regular local file takes the whole buffer in one call; finish a short write
        # (signal, quota) rather than leave half a line behind.
        while written < len(data):
            written += os.write(fd, data[written:])
        os.fsync(fd)
    finally:
        os.close(fd)


def _parse(path: Path) -> tuple[list[dict[str, Any]], bool]:
    """Records of ``path`` and whether its last line was truncated (and dropped)."""
    text = path.read_bytes().decode("utf-8", errors="replace")
    lines = text.split("\n")
    records: list[dict[str, Any]] = []
    truncated = False
    last = max((i for i, line in enumerate(lines, start=1) if line.strip()), default=0)
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        is_last = number == last
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if is_last:
                truncated = True
                continue
            raise ValueError(
                f"{path}:{number}: corrupt record (not JSON) before the last line"
            ) from None
        if not isinstance(record, dict):
            raise ValueError(f"{path}:{number}: record is {type(record).__name__}, not an object")
        if is_last and not text.endswith("\n"):
            # Valid JSON by luck but never terminated: the write did not finish.
            truncated = True
            continue
        records.append(record)
    return records, truncated


def read_records(path: str | os.PathLike) -> list[dict[str, Any]]:
    """All complete records of a JSON-lines file, in file order ([] when it does not exist).

    A truncated last line (an interrupted write) is dropped with a warning; the file is
    left as is (`truncate_records` repairs it). A corrupt line before the last raises
    ValueError naming the file and line.
    """
    path = Path(path)
    if not path.exists():
        return []
    records, truncated = _parse(path)
    if truncated:
        warnings.warn(f"{path}: dropped a truncated last line (interrupted write)", stacklevel=2)
    return records


def truncate_records(path: str | os.PathLike, max_step: int | None = None) -> int:
    """Rewrite ``path`` keeping complete records with ``step <= max_step`` (all if None).

    Drops a truncated last line too. The new content goes to a temporary file in the same
    folder, fsync'ed, then ``os.replace``d over the old one, so a crash leaves either the
    old or the new file. Returns the number of lines removed; the file is not touched
    when nothing needs removing.
    """
    path = Path(path)
    if not path.exists():
        return 0
    records, truncated = _parse(path)
    kept = [r for r in records if max_step is None or int(r.get("step", 0)) <= max_step]
    removed = len(records) - len(kept) + int(truncated)
    if removed == 0:
        return 0
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            for record in kept:
                handle.write(json.dumps(record, allow_nan=False, separators=(",", ":")) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return removed
