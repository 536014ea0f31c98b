"""Weighted mixtures of training sets (config data.mixture), mixed by grain's MapDataset.mix.

A mixture spec is comma-separated entries NAME[OPTIONS]:WEIGHT (configs/common.py documents
the options), e.g. 'synthetic[clips=4000]:0.5,vggsound[data_dir=/data/tfds]:0.5'. `parse`
reads it into `Entry`s; `MixtureSource` mixes the entries' random-access sources into one,
which the pipeline's GlobalBatchSampler shuffles like any other source, so global batches stay
independent of the process and worker counts.
"""

import dataclasses
import functools
import math
import re
from typing import Sequence

import grain.python as grain
import numpy as np

OPTIONS = ('data_dir', 'seed', 'clips')
_ENTRY = re.compile(r'\s*([a-z][a-z0-9_]*)\s*(?:\[([^\[\]]*)\])?\s*(?::\s*([^\s:]+))?\s*')
# Fields every record of a mixture keeps (the sources' extra fields differ, and a batch needs
# one set); `source` is added: the index of the entry the record came from.
FIELDS = ('frames', 'waveform', 'label', 'labels', 'onsets', 'num_onsets', 'index')


@dataclasses.dataclass(frozen=True)
class Entry:
  """One source of a mixture: a dataset name, its share of the examples and its options."""
  name: str
  weight: float = 1.0
  data_dir: str | None = None
  seed: int | None = None
  clips: int | None = None

  def spec(self) -> str:
    """The entry written back as NAME[OPTIONS]:WEIGHT (what `parse` reads)."""
    options = ','.join(f'{k}={getattr(self, k)}' for k in OPTIONS
                       if getattr(self, k) is not None)
    return f'{self.name}{f"[{options}]" if options else ""}:{self.weight:g}'


def _split_top_level(spec: str) -> list[str]:
  """Splits on the commas outside brackets."""
  parts, depth, start = [], 0, 0
  for i, ch in enumerate(spec):
    depth += {'[': 1, ']': -1}.get(ch, 0)
    if ch == ',' and depth == 0:
      parts.append(spec[start:i])
      start = i + 1
  return parts + [spec[start:]]


def _entry(text: str) -> Entry:
  match = _ENTRY.fullmatch(text)
  if not match:
    raise ValueError(f'entry {text.strip()!r}: expected NAME[key=value,...]:WEIGHT with a '
                     'lower_snake_case NAME')
  name, options, weight = match.groups()
  kwargs = {}
  for option in filter(None, (o.strip() for o in (options or '').split(','))):
    key, sep, value = option.partition('=')
    key, value = key.strip(), value.strip()
    if not sep or key not in OPTIONS or not value:
      raise ValueError(f'entry {text.strip()!r}: option {option!r} is not one of '
                       f'{", ".join(k + "=..." for k in OPTIONS)}')
    if key in kwargs:
      raise ValueError(f'entry {text.strip()!r}: option {key!r} given twice')
    if key in ('seed', 'clips'):
      if not re.fullmatch(r'\d+', value) or (key == 'clips' and int(value) == 0):
        raise ValueError(f'entry {text.strip()!r}: {key}={value} is not a '
                         f'{"positive" if key == "clips" else "non-negative"} integer')
      kwargs[key] = int(value)
    else:
      kwargs[key] = value
  if name == 'synthetic' and 'data_dir' in kwargs:
    raise ValueError(f'entry {text.strip()!r}: synthetic data has no data_dir')
  if name != 'synthetic' and 'seed' in kwargs:
    raise ValueError(f'entry {text.strip()!r}: seed only applies to synthetic data (a '
                     'prepared dataset is what it is)')
  if weight is not None:
    try:
      kwargs['weight'] = float(weight)
    except ValueError:
      kwargs['weight'] = math.nan
    if not (math.isfinite(kwargs['weight']) and kwargs['weight'] > 0):
      raise ValueError(f'entry {text.strip()!r}: weight {weight!r} is not a positive number')
  return Entry(name, **kwargs)


def parse(spec: str) -> tuple[Entry, ...]:
  """The entries of a mixture spec ('' -> none); ValueError naming the first bad entry."""
  if not spec.strip():
    return ()
  return tuple(_entry(part) for part in _split_top_level(spec))


def normalised(weights: Sequence[float]) -> np.ndarray:
  """Weights -> shares summing to 1."""
  w = np.asarray(weights, np.float64)
  return w / w.sum()


class MixtureSource:
  """grain random-access source: records of several sources in proportion to their weights.

  grain's MapDataset.mix interleaves the sources deterministically by their (integer-scaled)
  weights; its length is what the scarcest source can fill, so each source is first repeated
  enough times that one pass over the mixture holds (up to rounding) every record of the
  source scarcest for its share once, and every other source's records once or more. Records
  keep FIELDS and gain `source` () int32, the index of the source they came from.
  """

  def __init__(self, sources: Sequence, weights: Sequence[float], names: Sequence[str]):
    if not sources or len(sources) != len(weights) or len(names) != len(sources):
      raise ValueError(f'{len(sources)} sources, {len(weights)} weights and {len(names)} '
                       'names: expected one weight and name per source, at least one source')
    shares = normalised(weights)
    sizes = [len(s) for s in sources]
    length = max(n / w for n, w in zip(sizes, shares))
    parents = [grain.MapDataset.source(s).map(functools.partial(_tagged, source=i))
               .repeat(max(1, math.ceil(length * w / n)))
               for i, (s, n, w) in enumerate(zip(sources, sizes, shares))]
    self._mixed = grain.MapDataset.mix(parents, list(shares))
    self.shares, self.sizes, self.names = tuple(shares), tuple(sizes), tuple(names)

  def __len__(self) -> int:
    return len(self._mixed)

  def __repr__(self) -> str:  # grain compares it when restoring the data iterator.
    parts = ', '.join(f'{n} ({size} records, share {w:.4g})'
                      for n, size, w in zip(self.names, self.sizes, self.shares))
    return f'MixtureSource({parts}; length {len(self)})'

  def __getitem__(self, index: int) -> dict:
    return self._mixed[index]


def _tagged(record: dict, source: int) -> dict:
  """The record's FIELDS and its source index (module-level: grain workers pickle it)."""
  out = {k: record[k] for k in FIELDS if k in record}
  out['source'] = np.int32(source)
  return out
