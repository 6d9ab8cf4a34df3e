"""Sort the lines of a metrics.jsonl buffer into train rows and the rest, in numpy.

A run logs ~100 train rows for every evaluation row, and the report needs the evaluation
rows (knn, probe, events), the number of train rows and the last one. Splitting a 5 MB file
into 10,000 ``bytes`` objects and testing each costs ~10 ms of Python per run (10 s for a
1,000-run study); finding the newlines and comparing the first bytes of every line as
arrays costs ~1 ms, and only the ~1 % of lines that are not train rows become Python
objects. numpy releases the GIL for this work, so runs can be scanned in threads.

A line is *plainly* a train row when it starts with one of moco3.runfolder.rows.TRAIN_PREFIXES
(``{"kind": "train"`` or ``{"kind":"train"``: how json.dumps and compact writers spell a row
whose first key is kind). Every other non-blank line is returned to be parsed, so a writer
with another key order is still read right, only slower.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from moco3.runfolder.rows import TRAIN_PREFIXES

_WIDTH = max(len(p) for p in TRAIN_PREFIXES)
# Each prefix as (its first 8 bytes, its last 8 bytes, where those start), little-endian.
_PATTERNS = [(int.from_bytes(p[:8], "little"), int.from_bytes(p[-8:], "little"), len(p) - 8)
             for p in TRAIN_PREFIXES]
_NEWLINE = ord("\n")


@dataclass
class LineScan:
    """What ``scan_lines`` found in a buffer of whole lines."""

    other: list[tuple[int, bytes]]  # (1-based line number, line) of non-blank non-train lines
    num_train: int  # lines that are plainly train rows
    last_train: bytes | None  # the last of them
    last_train_at: int = 0  # its 1-based line number (0: none)


def scan_lines(body: bytes) -> LineScan:
    """Classify the lines of ``body`` (whole lines: empty, or ending with a newline)."""
    if not body:
        return LineScan([], 0, None, 0)
    if not body.endswith(b"\n"):
        raise ValueError("scan_lines needs whole lines (the buffer must end with a newline)")
    data = np.frombuffer(body, dtype=np.uint8)
    ends = np.flatnonzero(data == _NEWLINE)  # one per line
    starts = np.empty_like(ends)
    starts[0] = 0
    starts[1:] = ends[:-1] + 1
    # Compare the first bytes of every line with each prefix as two 8-byte words: `words[i]`
    # is the (unaligned) word starting at byte i. A short line's words run into the next
    # line, but then hold a newline, which no prefix has, so it cannot match; so do the
    # words of the last line, moved back to end at the buffer's last byte (a newline).
    is_train = np.zeros(len(starts), dtype=bool)
    if len(body) >= _WIDTH:
        words = np.ndarray((len(body) - 7,), dtype="<u8", buffer=body, strides=(1,))
        last = len(words) - 1
        for head, tail, tail_at in _PATTERNS:
            is_train |= ((words[np.minimum(starts, last)] == head)
                         & (words[np.minimum(starts + tail_at, last)] == tail))
    train_at = np.flatnonzero(is_train)
    last, last_at = None, 0
    if len(train_at):
        j = int(train_at[-1])
        last, last_at = body[starts[j]:ends[j]], j + 1
    other = []
    for j in np.flatnonzero(~is_train).tolist():
        line = body[starts[j]:ends[j]]
        if line.strip():
            other.append((j + 1, line))
    return LineScan(other, len(train_at), last, last_at)
