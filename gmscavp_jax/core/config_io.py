"""A run's resolved config on disk: WORKDIR/config.json, written by the trainer, read by
every command that uses the workdir afterwards."""

import json
import os

import jax
import ml_collections


def save_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Writes the resolved config to WORKDIR/config.json (process 0)."""
  if jax.process_index() == 0:
    with open(os.path.join(workdir, 'config.json'), 'w') as f:
      f.write(config.to_json_best_effort(indent=2, sort_keys=True))


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The resolved config a run saved in `workdir` (for the evaluation and query CLIs)."""
  path = os.path.join(workdir, 'config.json')
  if not os.path.exists(path):
    raise FileNotFoundError(f'{path} not found: is {workdir!r} the workdir of a training run?')
  with open(path) as f:
    # JSON turns tuples into lists; the model and loss expect tuples.
    return ml_collections.ConfigDict(json.load(f, object_hook=_lists_to_tuples))


def _lists_to_tuples(obj: dict) -> dict:
  return {k: tuple(v) if isinstance(v, list) else v for k, v in obj.items()}
