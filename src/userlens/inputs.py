"""Opening the files a user names (tables, ``--config``, ``--ids``): one check and one message per defect.

A named pipe or a device is refused rather than read: userlens reads an input more than once
(a header, a checksum, the rows), which a pipe cannot give, and "file not found" would be untrue.
"""

from __future__ import annotations

import codecs
import os
import stat
from pathlib import Path

from userlens.errors import InputError

_SPECIAL = ((stat.S_ISFIFO, "a named pipe"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
            (stat.S_ISBLK, "a block device"))


def input_file(path: str | Path, option: str = "") -> Path:
    """``path`` if it is a regular file (or a link to one), else an :class:`InputError` saying what it is.

    ``option`` (e.g. ``"--ids"``) names the command-line option in the fix.
    """
    p = Path(path)
    where = f"the {option} path" if option else "the path"
    try:
        mode = p.stat().st_mode
    except FileNotFoundError:
        raise InputError(f"{p}: file not found. Fix: check {where}.") from None
    except OSError as e:  # permission denied on a parent, a name too long, a loop of links ...
        raise InputError(f"{p}: cannot open ({e.strerror}). Fix: check {where} and its permissions.") from None
    if stat.S_ISDIR(mode):
        raise InputError(f"{p}: is a directory, not a file. Fix: point to the file inside it.")
    for test, what in _SPECIAL:
        if test(mode):
            raise InputError(f"{p}: is {what}, not a regular file; userlens reads an input more than once. "
                             f"Fix: save it to a file first (e.g. `cat {p} > data.csv`) and pass that.")
    if not os.access(p, os.R_OK):
        raise InputError(f"{p}: permission denied (not readable by this user). Fix: `chmod u+r {p}`, or run as "
                         "a user who may read it.")
    return p


def line_of_byte(p: Path, offset: int) -> int:
    """1-based physical line holding byte ``offset`` (streamed: error paths only)."""
    line, seen = 1, 0
    with open(p, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            if seen + len(chunk) > offset:
                return line + chunk.count(b"\n", 0, offset - seen)
            line += chunk.count(b"\n")
            seen += len(chunk)
    return line


def first_non_utf8(p: Path) -> tuple[int, int] | None:
    """(physical line, byte value) of the first byte sequence that is not UTF-8, or None."""
    dec, seen = codecs.getincrementaldecoder("utf-8")(), 0
    with open(p, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            try:
                dec.decode(chunk)
            except UnicodeDecodeError as e:
                return line_of_byte(p, seen + e.start), chunk[e.start]
            seen += len(chunk)
    return None


def not_utf8(p: Path, line: int, byte: int) -> InputError:
    """The one message for a text input that is not UTF-8, with the line, the byte and the fix."""
    return InputError(f"{p}:line {line}: not UTF-8 text (byte 0x{byte:02x}; Latin-1 or Windows-1252?). "
                      "Fix: re-save the file as UTF-8, e.g. `iconv -f latin1 -t utf-8 IN > OUT`.")


def read_utf8(path: str | Path, option: str = "") -> str:
    """The whole text of a small input file (a config, an ids list); not UTF-8 is named with its line."""
    p = input_file(path, option)
    data = p.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        error = not_utf8(p, data.count(b"\n", 0, e.start) + 1, data[e.start])
    raise error
