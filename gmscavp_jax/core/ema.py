"""The exponential moving average of the weights (train.ema_decay > 0) that inference uses.

`ema_step` runs inside the jitted train step after the optimizer update (core/steps.py);
each group's decay warms up over that group's own updates, so a denoiser that starts
training only in a run's second stage does not average in its initialisation for long.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from gmscavp_jax.core import phases


def ema_update(ema, params, decay: float, count: jax.Array):
  """decay_t * ema + (1 - decay_t) * params, leaf by leaf, at the group's update `count`
  (0 for its first update): decay_t = min(decay, (1 + count) / (10 + count)), so the
  average forgets its initialisation within the first updates."""
  n = jnp.asarray(count, jnp.float32)
  d = jnp.minimum(decay, (1.0 + n) / (10.0 + n))
  return jax.tree.map(lambda e, p: (d * e + (1.0 - d) * p).astype(e.dtype), ema, params)


def update_count(opt_state) -> jax.Array:
  """How many updates a group's optimizer has taken (Adam's count: skipped steps leave it)."""
  is_adam = lambda x: isinstance(x, optax.ScaleByAdamState)
  return next(x for x in jax.tree.leaves(opt_state, is_leaf=is_adam) if is_adam(x)).count


def ema_step(ema_params: dict, opt_state: dict, params: dict, phase: phases.Phase,
             keep: Callable, decay: float) -> dict:
  """The EMA {group: tree} after a step of `phase` that left `params`.

  Args:
    ema_params: the EMA before the step.
    opt_state: the optimizer states before the step (their counts warm the decay up).
    params: the params after the step.
    phase: the step's phase: the groups it trains average in their new params; the a2v
      denoiser between its updates keeps its average; a group its stage does not train
      equals its params (the average of a constant), so frozen encoders stay the ones the
      generator stage trains on.
    keep: keep(new, old) -> new, or old on a skipped (non-finite) step.
    decay: train.ema_decay.
  """
  ema = dict(ema_params)
  stage_groups = phase.with_a2v().groups if phase.msd else phase.groups
  for k in params:
    if k in phase.groups:
      new = ema_update(ema[k], params[k], decay, update_count(opt_state[k]))
      ema[k] = jax.tree.map(keep, new, ema[k])
    elif k not in stage_groups:
      ema[k] = params[k]
  return ema
