"""The train state a checkpoint holds, and which of its params inference uses.

A state without EMA keeps the pytree (and checkpoints) it had before EMA existed; with
train.ema_decay > 0 it is an `EmaTrainState`, and every sampling and embedding of a trained
state reads the average (`inference_params`).
"""

from typing import Any

import flax
import jax
import ml_collections


@flax.struct.dataclass
class TrainState:
  """What a checkpoint holds of the model: step, params and optimizer state (per group)."""
  step: jax.Array
  params: Any
  opt_state: Any
  # Not a field: a state without EMA has the pytree (and checkpoint) it had before EMA existed.
  ema_params = None


@flax.struct.dataclass
class EmaTrainState(TrainState):
  """A TrainState that also holds the params' moving average (train.ema_decay > 0): the same
  tree and layout as the params."""
  ema_params: Any = None


def inference_field(config: ml_collections.ConfigDict) -> str:
  """The TrainState field that every sampling and embedding of a trained state uses:
  'ema_params' with train.ema_decay > 0, else 'params'."""
  return 'ema_params' if config.train.ema_decay > 0 else 'params'


def inference_params(state: TrainState, config: ml_collections.ConfigDict):
  """The params to sample and embed with (`inference_field`) of a train state."""
  return getattr(state, inference_field(config))
