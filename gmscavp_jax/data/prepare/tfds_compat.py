"""Building a TFDS dataset larger than 1 GB per split without TensorFlow installed.

tfds 4.9's local writer passes every example through its Shuffler, which keeps a split in
memory up to 1 GB and then spills it into 1000 bucket files through `tf.io.gfile`: that
import fails without TensorFlow (ModuleNotFoundError: No module named 'tensorflow'), so
only toy datasets would build. Training never needs TensorFlow (grain reads the ArrayRecord
shards), and neither should preparing: while a build runs, `spill_without_tensorflow` gives
the Shuffler a gfile made of etils.epath (which tfds itself uses for paths), and puts the
previous one back afterwards. With TensorFlow installed it changes nothing.
"""

import contextlib
import importlib.util
import resource
import types
from typing import Iterator

from etils import epath


class _NeverRaised(Exception):
  """Stands for tf.errors.ResourceExhaustedError: the Shuffler catches it to raise the
  open-files limit, which `spill_without_tensorflow` raises before the build instead."""


_EPATH_TF = types.SimpleNamespace(
    io=types.SimpleNamespace(gfile=types.SimpleNamespace(
        GFile=lambda path, mode='r': epath.Path(path).open(mode),
        exists=lambda path: epath.Path(path).exists(),
        remove=lambda path: epath.Path(path).unlink())),
    errors=types.SimpleNamespace(ResourceExhaustedError=_NeverRaised))


def _allow_open_files(count: int) -> None:
  """Raises the soft RLIMIT_NOFILE to `count` (at most the hard limit): the Shuffler keeps
  one file per bucket open, more than the common default of 1024."""
  soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
  wanted = count if hard == resource.RLIM_INFINITY else min(count, hard)
  if soft != resource.RLIM_INFINITY and soft < wanted:
    resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


@contextlib.contextmanager
def spill_without_tensorflow() -> Iterator[None]:
  """Within the block, tfds' Shuffler writes its disk buckets without TensorFlow."""
  from tensorflow_datasets.core import shuffle  # pylint: disable=g-import-not-at-top
  if importlib.util.find_spec('tensorflow') is not None:
    yield
    return
  _allow_open_files(shuffle.BUCKETS_NUMBER + 1024)
  previous = shuffle.tf
  shuffle.tf = _EPATH_TF
  try:
    yield
  finally:
    shuffle.tf = previous
