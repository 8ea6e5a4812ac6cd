"""``SafeCheckpointer``: Detectron2's ``DetectionCheckpointer`` whose files are never half written,
which resumes from the newest checkpoint that can be read, and which names the file it cannot read.

* Every file (``model_*.pth`` and ``last_checkpoint``) is written to a temporary file in the same
  folder, flushed to disk and renamed over the target: a crash leaves the file as it was
  (complete, or absent), never a truncated one.
* ``resume_or_load(..., resume=True)`` tries the file named by ``last_checkpoint`` first and then
  the other ``*.pth`` files of the folder, newest first; each one that cannot be read is skipped
  with a warning naming it. Temporary files left by a crash are removed.
* A file that cannot be read raises :class:`CheckpointError` naming it (and ``MODEL.WEIGHTS`` when
  it came from there) instead of the unpickler's ``EOFError`` or ``KeyError``.
* ``block_saves(reason)`` turns ``save`` into a logged no-op: the divergence guard calls it so that
  no checkpoint of a diverged model is written.
"""

import glob
import logging
import os

import torch
from detectron2.checkpoint import DetectionCheckpointer

from .atomic import TMP_SUFFIX, atomic_write

logger = logging.getLogger("detectron2")

class CheckpointError(ValueError):
    """A checkpoint file that does not exist or cannot be read."""


class SafeCheckpointer(DetectionCheckpointer):
    """``DetectionCheckpointer`` with atomic writes, resume from the newest readable checkpoint and
    clear errors for unreadable files (see the module docstring)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._blocked = None
        self.not_loaded = []  # model keys the last loaded file had no (matching) weights for

    # ------------------------------------------------------------------------------------ save
    def block_saves(self, reason: str):
        """From now on ``save`` writes nothing (and logs ``reason``)."""
        self._blocked = reason

    def _local_dir(self):
        return bool(self.save_dir) and "://" not in self.save_dir

    def save(self, name: str, **kwargs):
        if not self.save_dir or not self.save_to_disk:
            return
        if self._blocked:
            logger.warning("Not saving checkpoint %s: %s", name, self._blocked)
            return
        if not self._local_dir():
            return super().save(name, **kwargs)
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        self.logger.info("Saving checkpoint to %s", save_file)
        atomic_write(save_file, lambda f: torch.save(data, f))
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str):
        if not self._local_dir():
            return super().tag_last_checkpoint(last_filename_basename)
        atomic_write(os.path.join(self.save_dir, "last_checkpoint"),
                     lambda f: f.write(last_filename_basename), mode="w")

    # ------------------------------------------------------------------------------------ load
    def _load_file(self, filename):
        try:
            return super()._load_file(filename)
        except Exception as e:
            raise CheckpointError(
                f"cannot read checkpoint {filename!r} ({type(e).__name__}: {e}); it is truncated, "
                "empty or not a checkpoint"
            ) from e

    def load(self, path, *args, **kwargs):
        if path and "://" not in path and not os.path.isfile(path):
            raise CheckpointError(f"checkpoint {path!r} does not exist or is not a file")
        try:
            return super().load(path, *args, **kwargs)
        finally:
            self._parsed_url_during_load = None  # Detectron2 leaves it set when loading fails

    def _load_model(self, checkpoint):
        incompatible = super()._load_model(checkpoint)
        if incompatible is not None:
            self.not_loaded = list(incompatible.missing_keys) + [k for k, *_ in incompatible.incorrect_shapes]
        return incompatible

    def check_complete(self, source: str):
        """Raise :class:`CheckpointError` when the last loaded file (``source``, for the message)
        left parameters of the model without weights: they would run randomly initialized."""
        keys = self.not_loaded
        if keys:
            raise CheckpointError(
                f"{source} has no weights for {len(keys)} parameters of this model "
                f"({', '.join(keys[:4])}{', ...' if len(keys) > 4 else ''}): they would run randomly "
                "initialized. Use the weights of a model trained with this config"
            )

    def _resume_candidates(self):
        """The file named by ``last_checkpoint``, then the folder's other ``*.pth``, newest first."""
        candidates = []
        named = self.get_checkpoint_file()
        if named and os.path.basename(named):
            candidates.append(named)
        else:
            logger.warning("%s names no file: looking for other checkpoints",
                           os.path.join(self.save_dir, "last_checkpoint"))
        others = [p for p in self.get_all_checkpoint_files() if os.path.abspath(p) != os.path.abspath(named)]
        others.sort(key=lambda p: (os.path.getmtime(p), os.path.basename(p)), reverse=True)
        return candidates + others

    def _remove_incomplete_writes(self):
        if not self.save_to_disk or not self._local_dir():
            return
        pattern = os.path.join(self.save_dir, ".{}.*" + TMP_SUFFIX)
        for tmp in glob.glob(pattern.format("*.pth")) + glob.glob(pattern.format("last_checkpoint")):
            logger.warning("Removing %s, left by an interrupted checkpoint write", tmp)
            os.unlink(tmp)

    def resume_or_load(self, path: str, *, resume: bool = True):
        """With ``resume`` and a ``last_checkpoint`` in the folder: load the newest readable
        checkpoint (all states), skipping unreadable ones with a warning; raise
        :class:`CheckpointError` when none can be read. Otherwise load the model weights of
        ``path`` (``MODEL.WEIGHTS``; "" = none)."""
        if resume and self.has_checkpoint():
            self._remove_incomplete_writes()
            failures = []
            for candidate in self._resume_candidates():
                try:
                    return self.load(candidate)
                except CheckpointError as e:
                    logger.warning("Skipping checkpoint for --resume: %s", e)
                    failures.append(str(e))
            raise CheckpointError(
                f"--resume: no readable checkpoint in {self.save_dir!r}: " + "; ".join(failures)
                + ". Delete the unreadable files, or train without --resume to start from MODEL.WEIGHTS."
            )
        try:
            return self.load(path, checkpointables=[])
        except CheckpointError as e:
            raise CheckpointError(f"MODEL.WEIGHTS: {e}") from e
