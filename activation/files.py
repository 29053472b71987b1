"""Files the commands write: where they may go (checked before any work is done), how they are written
(whole or not at all), and how a CSV cell is made safe to open in a spreadsheet.

Every ``--out`` of every command goes through :func:`output_file` or :func:`output_dir` first, so a folder
where a file is expected, or a file where a folder is expected, is a clear error before anything is
computed or written; a missing folder is created, but only when the data is ready to be written.
"""

from __future__ import annotations

import csv
import os
import re
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from activation.errors import InputError

# --- where an output may go ------------------------------------------------------------------------


def _blocking_file(path: Path) -> Path | None:
    """The nearest ancestor of ``path`` that exists as something other than a folder (a file), if any."""
    for parent in path.parents:
        if parent.exists():
            return None if parent.is_dir() else parent
    return None


def _nearest_folder(path: Path) -> Path:
    for parent in path.parents:
        if parent.is_dir():
            return parent
    return Path(".")


def _writable_below(p: Path, folder: Path, flag: str) -> Path:
    """``p`` when no file stands where one of its folders should be and ``folder`` (where it goes) is writable."""
    blocking = _blocking_file(p)
    if blocking is not None:
        raise InputError(
            f"{flag} {p}: {blocking} is a file, not a folder",
            fix=f"choose a path under a folder (or remove or rename the file {blocking})",
        )
    if not os.access(folder, os.W_OK | os.X_OK):
        raise InputError(
            f"{flag} {p}: folder {folder} is not writable", fix="choose a folder you may write to"
        )
    return p


def output_file(path: str | Path, *, flag: str = "--out", example: str = "out.csv") -> Path:
    """Check that ``path`` can be written as a file; return it as a :class:`Path`.

    Raises:
        InputError: ``path`` is a folder, one of its parents is a file, or its folder is not writable.
    """
    p = Path(path)
    if p.is_dir():
        raise InputError(
            f"{flag} {p} is a folder, but a file is expected",
            fix=f"give a file name, e.g. {flag} {p / example}",
        )
    return _writable_below(p, _nearest_folder(p), flag)


def output_dir(path: str | Path, *, flag: str = "--out") -> Path:
    """Check that ``path`` can be used (or created) as a folder; return it as a :class:`Path`.

    Raises:
        InputError: ``path`` (or one of its parents) is an existing file, or it cannot be written.
    """
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise InputError(
            f"{flag} {p} is a file, but a folder is expected",
            fix=f"give a folder name (it is created), e.g. {flag} {p.with_suffix('')}-files, or remove the file",
        )
    return _writable_below(p, p if p.is_dir() else _nearest_folder(p), flag)


# --- writing whole files ---------------------------------------------------------------------------


def _tmp_for(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


def atomic_write(path: Path, data: bytes | str, *, mkdir: bool = True) -> None:
    """Write ``data`` to ``path`` so readers see the old file or the new one, never a partial one; a
    failure leaves no temporary file behind. ``mkdir=False``: the folder is known to exist."""
    if mkdir:
        path.parent.mkdir(parents=True, exist_ok=True)
    raw = data.encode("utf-8") if isinstance(data, str) else data
    tmp = _tmp_for(path)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            view = memoryview(raw)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_all(files: Sequence[tuple[Path, bytes | str]]) -> None:
    """Write several files that belong together (a report and its CSV): all temporary files first, then
    the renames, so a failure while writing leaves none of them."""
    tmps: list[tuple[Path, Path]] = []
    try:
        for path, data in files:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = _tmp_for(path)
            tmps.append((tmp, path))
            tmp.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
        for tmp, path in tmps:
            os.replace(tmp, path)
    finally:
        for tmp, _ in tmps:
            tmp.unlink(missing_ok=True)


@contextmanager
def atomic_text(path: Path) -> Iterator[IO[str]]:
    """A text file (UTF-8, ``newline=''`` for :mod:`csv`) that appears at ``path`` only when the block
    ends without an error; otherwise nothing is left behind (not even the folder's temporary file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_for(path)
    try:
        with tmp.open("w", newline="", encoding="utf-8") as fh:
            yield fh
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


# --- CSV cells a spreadsheet will not execute ------------------------------------------------------

#: A cell starting with one of these is a formula to Excel, LibreOffice and Google Sheets (OWASP,
#: "CSV Injection": ``=``, ``+``, ``-``, ``@``, tab, carriage return).
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")


def csv_cell(value: Any) -> Any:
    """``value`` as it may go into a CSV cell: a string a spreadsheet would run as a formula gets a leading
    single quote (OWASP's recommendation), so it shows as text; numbers, and strings that are plain numbers
    such as ``-12.5``, are left as they are."""
    if isinstance(value, str) and value.startswith(FORMULA_START) and not _NUMBER.fullmatch(value):
        return "'" + value
    return value


class SafeCsvWriter:
    """:func:`csv.writer` whose every cell goes through :func:`csv_cell`."""

    def __init__(self, fh: IO[str], **kwargs: Any) -> None:
        self._w = csv.writer(fh, **kwargs)

    def writerow(self, row: Iterable[Any]) -> None:
        self._w.writerow([csv_cell(v) for v in row])

    def writerows(self, rows: Iterable[Iterable[Any]]) -> None:
        for row in rows:
            self.writerow(row)


def csv_writer(fh: IO[str], **kwargs: Any) -> SafeCsvWriter:
    """The CSV writer every export uses (see :func:`csv_cell`)."""
    return SafeCsvWriter(fh, **kwargs)


def safe_frame(df: Any) -> Any:
    """A copy of a pandas DataFrame whose text cells, index and column names went through :func:`csv_cell`."""
    out = df.copy()
    for col in out.columns:
        if out[col].dtype == object:
            out[col] = out[col].map(csv_cell)
    out.index = out.index.map(csv_cell)
    out.columns = out.columns.map(csv_cell)
    return out
