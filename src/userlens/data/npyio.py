"""``.npy`` files written and read in pieces, so arrays larger than memory never sit in it whole.

:class:`NpyWriter` appends chunks to a 1-D ``.npy`` file and writes the final shape into its header
on close (the header is reserved at full width first, so it is rewritten in place). :class:`NpyColumn`
reads row ranges with ``pread`` into fresh buffers: unlike a memory map, what was read leaves the
process when the buffer is freed, so a pass over a 100M-row timeline keeps only one chunk resident.
The files are plain ``.npy`` (``np.load`` reads them, memory-mapped or not).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

_MAX_ROWS = 10**15  # the reserved header holds a shape this wide, so any real length fits in place


def _header(dtype: np.dtype, rows: int) -> bytes:
    d = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": (rows,)}
    text = repr(d)
    width = len(repr({**d, "shape": (_MAX_ROWS,)}))
    # magic (6) + version (2) + length (2) + text + newline: padded with spaces to a multiple of 64
    total = -(-(10 + width + 1) // 64) * 64
    return b"\x93NUMPY\x01\x00" + (total - 10).to_bytes(2, "little") + (text.ljust(total - 11) + "\n").encode("latin1")


class NpyWriter:
    """Append 1-D chunks of one dtype to ``path``; :meth:`close` fixes the header's length."""

    def __init__(self, path: str | Path, dtype: np.dtype | type) -> None:
        self.path, self.dtype, self.rows = Path(path), np.dtype(dtype), 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path, "wb")
        self._fh.write(_header(self.dtype, 0))

    def append(self, chunk: np.ndarray) -> None:
        a = np.ascontiguousarray(chunk, dtype=self.dtype).reshape(-1)
        self._fh.write(a.data)
        self.rows += len(a)

    def close(self) -> None:
        if self._fh.closed:
            return
        self._fh.seek(0)
        self._fh.write(_header(self.dtype, self.rows))
        self._fh.close()


class NpyColumn:
    """Row ranges of a 1-D ``.npy`` file, read with ``pread`` (no memory map stays behind)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        with open(self.path, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read(fh)
            self.offset = fh.tell()
        if len(shape) != 1 or fortran:
            raise ValueError(f"{self.path}: expected a 1-D C-order array, got shape {shape}")
        self.dtype, self.rows = dtype, int(shape[0])

    def __len__(self) -> int:
        return self.rows

    def read(self, lo: int, hi: int) -> np.ndarray:
        """Rows ``[lo, hi)`` as a new array."""
        hi = min(hi, self.rows)
        out = np.empty(max(hi - lo, 0), dtype=self.dtype)
        if len(out):
            fd = os.open(self.path, os.O_RDONLY)
            try:
                view, pos, end = memoryview(out).cast("B"), self.offset + lo * self.dtype.itemsize, out.nbytes
                done = 0
                while done < end:
                    n = os.preadv(fd, [view[done:]], pos + done)
                    if n <= 0:
                        raise OSError(f"{self.path}: file shorter than its header says (rows {lo}..{hi})")
                    done += n
            finally:
                os.close(fd)
        return out


__all__ = ("NpyColumn", "NpyWriter")
