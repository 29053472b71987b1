"""What a file looks like from its first bytes: its text encoding (byte-order marks, UTF-16 without one,
UTF-8 or Latin-1) or the kind of binary file it is, so that a wrong file gets an error that says what it is
and what was expected instead of a parser's complaint."""

from __future__ import annotations

import codecs
from dataclasses import dataclass
from pathlib import Path

import numpy as np

_SIGNATURES = (
    (b"PK\x03\x04", "a zip archive (an Excel .xlsx workbook is one)", "xlsx"),
    (b"\xd0\xcf\x11\xe0", "an old Office document (an Excel .xls workbook)", "xls"),
    (b"PAR1", "a Parquet file", "parquet"),
    (b"\x1f\x8b", "a gzip-compressed file", "gzip"),
    (b"%PDF", "a PDF document", "pdf"),
    (b"SQLite format 3", "an SQLite database", "sqlite"),
    (b"DUCK", "a DuckDB database", "duckdb"),
)
_HEAD = 1 << 16


@dataclass(frozen=True)
class Sniffed:
    """``encoding`` is what to read the text with (None: not text); ``what`` describes the file."""

    encoding: str | None
    what: str
    kind: str  # text | utf-16 | utf-16-nobom | binary kinds from _SIGNATURES | binary
    first_line: str = ""


def sniff(path: Path) -> Sniffed:
    with path.open("rb") as fh:
        head = fh.read(_HEAD)
    if head[4:8] == b"DUCK":
        return Sniffed(None, "a DuckDB database", "duckdb")
    for magic, what, kind in _SIGNATURES:
        if head.startswith(magic):
            return Sniffed(None, what, kind)
    if head.startswith(codecs.BOM_UTF16_LE):
        return Sniffed(
            "utf-16", "UTF-16 text (with a byte-order mark)", "utf-16", _first_line(head, "utf-16")
        )
    if head.startswith(codecs.BOM_UTF16_BE):  # the warehouse reads UTF-16 little-endian only: transcode
        return Sniffed("utf-16-be", "UTF-16 big-endian text", "utf-16", _first_line(head, "utf-16"))
    if head.startswith(codecs.BOM_UTF8):
        return Sniffed("utf-8", "UTF-8 text with a byte-order mark", "text", _first_line(head[3:], "utf-8"))
    if head:
        even, odd = head[0::2], head[1::2]
        if odd.count(0) > 0.3 * len(odd) and even.count(0) < 0.05 * len(even):
            return Sniffed(None, "UTF-16 text without a byte-order mark (little-endian)", "utf-16-nobom")
        if even.count(0) > 0.3 * len(even) and odd.count(0) < 0.05 * len(odd):
            return Sniffed(None, "UTF-16 text without a byte-order mark (big-endian)", "utf-16-nobom")
    control = sum(1 for b in head if b < 32 and b not in (9, 10, 13))
    if head and (head.count(0) or control > 0.01 * len(head)):
        return Sniffed(None, f"binary data (not text: it starts with bytes {head[:8].hex(' ')})", "binary")
    encoding = "utf-8" if is_utf8(path) else "latin-1"
    first = _first_line(head, encoding)
    return Sniffed(encoding, f"{'UTF-8' if encoding == 'utf-8' else 'Latin-1'} text", "text", first)


def _first_line(head: bytes, encoding: str) -> str:
    text = head.decode(encoding, errors="replace")
    line = text.lstrip("\ufeff").splitlines()[0] if text.strip() else ""
    return line[:120]


def is_utf8(path: Path) -> bool:
    decoder = codecs.getincrementaldecoder("utf-8")()
    with path.open("rb") as fh:
        try:
            while chunk := fh.read(1 << 22):
                decoder.decode(chunk)
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            return False
    return True


def count_lines(path: Path, limit: int = 3) -> int:
    """Non-empty lines, counted up to ``limit``."""
    n = 0
    with path.open("rb") as fh:
        for raw in fh:
            if raw.strip():
                n += 1
                if n >= limit:
                    break
    return n


def has_multiline_fields(path: Path, encoding: str) -> bool:
    """Whether a quoted field spans lines: at some line end an odd number of quote characters has been seen
    since the start of the file (an escaped quote ``""`` counts twice, so it keeps the parity). Vectorised
    (about a second per GB); UTF-16 text is checked after decoding a copy."""
    if encoding.startswith("utf-16"):
        data = path.read_bytes().decode("utf-16", errors="replace").encode("utf-8")
        return _odd_at_newline(data, 0)[0]
    parity = 0
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 22):
            if b'"' not in chunk:
                continue  # parity unchanged, and a line end outside quotes stays outside
            found, parity = _odd_at_newline(chunk, parity)
            if found:
                return True
    return False


def _odd_at_newline(chunk: bytes, parity: int) -> tuple[bool, int]:
    """(a newline falls inside quotes, the quote parity after ``chunk``) given the parity before it."""
    arr = np.frombuffer(chunk, dtype=np.uint8)
    inside = (np.cumsum(arr == 34, dtype=np.uint8) + parity) & 1  # uint8 wraps mod 256: parity is kept
    found = bool(np.any(inside[arr == 10]))
    return found, int(inside[-1]) if len(inside) else parity


def transcode_to_utf8(path: Path, encoding: str, out: Path) -> Path:
    """Write ``path`` re-encoded as UTF-8 to ``out`` (streamed)."""
    with (
        path.open("r", encoding=encoding, newline="") as src,
        out.open("w", encoding="utf-8", newline="") as dst,
    ):
        while chunk := src.read(1 << 22):
            dst.write(chunk)
    return out
