"""Files that are never half written: :func:`atomic_write` (pure Python).

The content goes to a temporary file in the same folder (so the final move stays on one file
system), is flushed to disk, then replaces the target with ``os.replace``: the target holds either
its previous content or the whole new one. Checkpoints (``iou_aware.checkpoint``) and the synthetic
dataset's json files (``iou_aware.data.coco_writer``) are written this way.
"""

import os
import tempfile

__all__ = ["TMP_SUFFIX", "atomic_write"]

#: Suffix of the temporary files (``.<name>.<random>.tmp`` beside the target).
TMP_SUFFIX = ".tmp"


def atomic_write(path, write, mode="wb"):
    """Write ``path`` through ``write(file)`` into a temporary file in the same folder, flush it to
    disk and rename it over ``path`` (atomic on POSIX); the temporary file is removed on error."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=TMP_SUFFIX)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # the permissions open() would give (mkstemp: 0600)
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask
