"""What a run's ``checkpoints/`` folder holds, read without TensorFlow.

``tf.train.CheckpointManager`` saves step N in this order (TensorFlow 2.18, seen with
``strace``): the tensors go to ``ckpt-N_temp/part-00000-of-00001.{data-00000-of-00001,index}``
(each through a ``.tempstate<digits>`` file and a rename); ``MergeV2Checkpoints`` renames the
data files to ``ckpt-N.data-00000-of-00001``, writes ``ckpt-N.index`` last (in place, not
atomically) and deletes ``ckpt-N_temp/``; only then is the index file ``checkpoint``
rewritten (atomically: ``checkpoint.tmp<hex>``, then a rename) and old checkpoints deleted.
A process killed in between leaves:

- ``ckpt-N_temp/`` and perhaps renamed ``ckpt-N.data-*`` files, but no ``ckpt-N.index`` (the
  save did not happen: the checkpoint before it is the newest);
- a truncated ``ckpt-N.index`` (killed while writing it), which TensorFlow cannot read;
- a complete ``ckpt-N`` that the ``checkpoint`` index does not list yet (for the first save
  the index file does not exist at all): TensorFlow's ``latest_checkpoint`` would not see it.

So a checkpoint counts as saved when its ``.index`` file is complete and every data shard its
name announces exists (`saved_checkpoints`), whatever the ``checkpoint`` index says (a resume
also checks that TensorFlow reads the index: ``unet3d.training.checkpoint``); the rest is
debris of a killed save (`checkpoint_debris`), removed when a job takes the folder. Complete:
the index is a TensorFlow table file (``tensorflow/core/lib/io/format.h``), whose 48-byte
footer, written last, ends with the table magic number ``0xdb4775248b80fb57`` (little-endian);
a truncated index lacks it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

#: The folder of a run's checkpoints, inside the run folder.
CHECKPOINT_FOLDER = "checkpoints"

_INDEX = re.compile(r"^(?P<prefix>.+-(?P<step>\d+))\.index$")
_DATA = re.compile(r"^(?P<prefix>.+)\.data-(?P<shard>\d{5})-of-(?P<shards>\d{5})$")
_TEMPORARY = re.compile(r"(_temp$|\.tempstate\d*$|^checkpoint\.tmp[0-9a-f]+$)")
#: The last 8 bytes of a complete TensorFlow table file (``kTableMagicNumber``, little-endian),
#: and the size of its footer (``Footer::kEncodedLength``).
_TABLE_MAGIC = (0xDB4775248B80FB57).to_bytes(8, "little")
_TABLE_FOOTER = 48


def complete_index(path: str | os.PathLike) -> bool:
    """True when the checkpoint index file ``path`` ends with a table footer (fully written).

    Args:
        path: a ``ckpt-N.index`` file (missing or unreadable: False).
    """
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            if handle.tell() < _TABLE_FOOTER:
                return False
            handle.seek(-len(_TABLE_MAGIC), os.SEEK_END)
            return handle.read(len(_TABLE_MAGIC)) == _TABLE_MAGIC
    except OSError:
        return False


def _data_shards(folder: Path) -> dict[str, set[tuple[int, int]]]:
    shards: dict[str, set[tuple[int, int]]] = {}
    for child in folder.iterdir():
        match = _DATA.match(child.name)
        if match and child.is_file():
            shards.setdefault(match["prefix"], set()).add(
                (int(match["shard"]), int(match["shards"])))
    return shards


def saved_checkpoints(folder: str | os.PathLike) -> list[Path]:
    """Prefixes of the checkpoints in ``folder`` whose files are all in place, oldest first.

    A checkpoint ``<name>-<step>`` counts when ``<name>-<step>.index`` exists complete
    (`complete_index`) and so does every data shard ``.data-<i>-of-<K>``, i = 0..K-1. Sorted by
    step (the newest last).

    Args:
        folder: a ``checkpoints/`` folder (missing: none).
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    shards = _data_shards(folder)
    found = []
    for child in folder.iterdir():
        match = _INDEX.match(child.name)
        if not match or not child.is_file() or not complete_index(child):
            continue
        present = shards.get(match["prefix"], set())
        counts = {total for _, total in present}
        if len(counts) == 1 and {index for index, _ in present} == set(range(counts.pop())):
            found.append((int(match["step"]), folder / match["prefix"]))
    return [prefix for _, prefix in sorted(found)]


def checkpoint_debris(folder: str | os.PathLike) -> list[Path]:
    """What killed saves left in ``folder``: ``*_temp/`` folders, truncated ``.index`` files and
    the data files of a checkpoint without a complete index, TensorFlow's temporary files
    (``*.tempstate*``, ``checkpoint.tmp<hex>``)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    indexed = {child.name[: -len(".index")] for child in folder.iterdir()
               if _INDEX.match(child.name) and complete_index(child)}
    debris = []
    for child in sorted(folder.iterdir()):
        data = _DATA.match(child.name)
        index = _INDEX.match(child.name)
        if (_TEMPORARY.search(child.name) or (data and data["prefix"] not in indexed)
                or (index and index["prefix"] not in indexed)):
            debris.append(child)
    return debris
