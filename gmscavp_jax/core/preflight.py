"""Before any work: the fields a prepared dataset decides, read from it, and every count the
config and the set's metadata can settle, checked (the trainer calls `check` before it writes
to the workdir, builds a model or compiles a step).

Read from a prepared set (data.name other than 'synthetic'), under their DESIGN §7 names:
- data.num_classes: the set's classes (its metadata 'classes');
- eval.num_test_clips: its whole test split.
Each is read when it is READ_FROM_SET (0), or still the value the config file gave it: the
synthetic benchmark's, which configs/common.py records in eval.synthetic_defaults, since a
config cannot tell a value given on the command line from its default. So
`--config=configs/msa.py:runlocal --config.data.name=vggsound --config.data.data_dir=D`
trains on all of D's classes and test clips; any other value is the user's, checked against
the set. A value given equal to the default is read from the set too: to keep it, set
eval.synthetic_defaults.FIELD=0 as well. (The record lives under eval, beside what a
continued run may change: it decides no trained state.)
The resolved values are what the trainer saves in WORKDIR/config.json.
"""

import dataclasses

from absl import logging
import ml_collections

from gmscavp_jax.core import config_checks
from gmscavp_jax.core import config_validation
from gmscavp_jax.data import pipeline
from gmscavp_jax.infra import errors

READ_FROM_SET = 0
# (section, field) of each config field a prepared set decides unless the user gives it.
FIELDS = (('data', 'num_classes'), ('eval', 'num_test_clips'))
EVAL_SPLIT = 'test'


@dataclasses.dataclass(frozen=True)
class PreparedSet:
  """A prepared dataset's metadata: its directory, class names and {split: clips}."""
  path: str
  classes: tuple[str, ...]
  sizes: dict


def prepared_set(config: ml_collections.ConfigDict) -> PreparedSet | None:
  """data.name's prepared set at the config's geometry (metadata only; no record is read),
  or None for the synthetic benchmark or while data.data_dir is unset (validation names it)."""
  if config.data.name == 'synthetic' or not config.data.data_dir:
    return None
  return PreparedSet(*pipeline.prepared_info(config))


def _left_to_set(config: ml_collections.ConfigDict, section: str, field: str) -> bool:
  """Whether config.section.field is READ_FROM_SET or the config file's synthetic default."""
  defaults = config.eval.get('synthetic_defaults') or {}
  return config[section][field] in (READ_FROM_SET, defaults.get(field, READ_FROM_SET))


def resolve(config: ml_collections.ConfigDict, prepared: PreparedSet | None) -> dict:
  """Sets the FIELDS left to the prepared set to its values, in place; returns {'section.field':
  value} of those set ({} for the synthetic benchmark, whose 0 is a ConfigError)."""
  if config.data.name == 'synthetic':
    for section, field in FIELDS:
      config_checks.require(
          config[section][field] != READ_FROM_SET, f'{section}.{field}',
          f'a positive integer ({READ_FROM_SET}, read from the set, is for a prepared '
          "data.name, not 'synthetic')", READ_FROM_SET)
    return {}
  if prepared is None:
    return {}
  if EVAL_SPLIT not in prepared.sizes:
    raise errors.ConfigError(
        f'config.data.name={config.data.name!r}: the prepared dataset {prepared.path} has no '
        f'{EVAL_SPLIT!r} split to evaluate on (it has {sorted(prepared.sizes)})')
  values = {'num_classes': len(prepared.classes), 'num_test_clips': prepared.sizes[EVAL_SPLIT]}
  resolved = {}
  for section, field in FIELDS:
    if not _left_to_set(config, section, field):
      continue
    if field == 'num_classes' and not prepared.classes:
      # A set without classes serves all-zero labels of whatever width the config gives.
      config_checks.require(
          config.data.num_classes != READ_FROM_SET, 'data.num_classes',
          f'a positive number of classes: the prepared dataset {prepared.path} names none',
          READ_FROM_SET)
      continue
    config[section][field] = values[field]
    resolved[f'{section}.{field}'] = values[field]
  return resolved


def check_counts(config: ml_collections.ConfigDict, prepared: PreparedSet | None) -> None:
  """The counts of `config` against the splits it reads: a ConfigError names the first field
  that does not fit (and the split's size)."""
  t, e = config.train, config.eval
  if prepared is None:  # The synthetic benchmark's splits are as large as the config says.
    return
  path, sizes = prepared.path, prepared.sizes
  if prepared.classes:
    config_checks.require(
        config.data.num_classes == len(prepared.classes), 'data.num_classes',
        f'{len(prepared.classes)}, the classes of the prepared dataset {path} (0 reads them)',
        config.data.num_classes)
  config_checks.require(
      e.num_test_clips <= sizes[EVAL_SPLIT], 'eval.num_test_clips',
      f'at most {sizes[EVAL_SPLIT]}, the clips of split {EVAL_SPLIT!r} of {path} (0 reads the '
      'whole split)', e.num_test_clips)
  if config.data.mixture:  # Its sources are opened, and checked, when the loader is built.
    return
  if 'train' not in sizes:
    raise errors.ConfigError(
        f'config.data.name={config.data.name!r}: the prepared dataset {path} has no '
        f"'train' split (it has {sorted(sizes)})")
  config_checks.require(
      t.batch_size <= sizes['train'], 'train.batch_size',
      f"at most {sizes['train']}, the clips of split 'train' of {path} (a batch would hold a "
      'clip twice)', t.batch_size)
  if e.num_memorisation_clips > sizes['train']:
    logging.info('eval.num_memorisation_clips=%d: the train split of %s has %d clips; the '
                 'memorisation check of evaluate compares against those', e.num_memorisation_clips,
                 path, sizes['train'])


def check(config: ml_collections.ConfigDict, num_devices: int | None = None) -> dict:
  """Resolves the fields a prepared set decides (`resolve`, in place), validates `config`
  (config_validation.validate) and checks its counts against the set (`check_counts`).

  Returns the resolved {'section.field': value}. Raises errors.ConfigError naming the first
  field that is off; nothing has been written or compiled by then. The evaluate command's
  own fields (config_validation.validate_evaluation) only warn: training does not read them.
  """
  prepared = prepared_set(config)
  resolved = resolve(config, prepared)
  if resolved:
    logging.info('read from the prepared set %s: %s', prepared.path,
                 ', '.join(f'{k}={v}' for k, v in resolved.items()))
  try:
    config_validation.validate(config, num_devices=num_devices)
    check_counts(config, prepared)
  except errors.ConfigError as e:
    if not resolved:
      raise
    raise errors.ConfigError(f'{e} ({", ".join(f"{k}={v}" for k, v in resolved.items())} '
                             f'read from the prepared set)') from e
  try:
    config_validation.validate_evaluation(config)
  except errors.ConfigError as e:
    logging.warning('%s: the evaluate command will refuse this (training does not read it; '
                    'pass the field to evaluate, e.g. --num_clips for eval.num_metric_clips)',
                    e)
  return resolved
