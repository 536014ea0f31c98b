"""Per-op profile of the side-by-side UNet's training step and forward pass (issue 22).

  python docs/probes/unet_step_profile.py [CONFIG] [BATCH] [TRACE_DIR]
  (defaults: configs/msa_msd.py's runlocal, 32, a temporary directory)

The programs are `tools/torch_sidebyside`'s JAX ones: the MSD UNet alone with random params
for every leaf, eq. 7's v-prediction loss on a fixed batch, its gradient, global-norm clipping
and Adam, jitted with params and optimizer state donated; and the jitted forward. Each is
traced for 10 calls with `infra/profiling.profile` and printed as a Breakdown: time per op
category (the step's against the forward's tells where the backward pass spends its time),
per module and the slowest ops, against a peak measured in the same process.
"""

import importlib
import sys

import jax
import jax.numpy as jnp

from gmscavp_jax.core import steps
from gmscavp_jax.infra import perf
from gmscavp_jax.infra import profiling
from gmscavp_jax.tools import sidebyside_lib as lib
from gmscavp_jax.tools import torch_sidebyside as sxs


def main(config_name='msa_msd', batch_size=32, logdir=None):
  config = importlib.import_module(f'configs.{config_name}').get_config('runlocal')
  mel_frames = steps.num_mel_frames(config)
  params = jax.device_put(lib.randomised_params(config, 0, mel_frames))
  forward, loss, tx = sxs.jax_functions(config)
  batch = jax.device_put(lib.make_batch(config, batch_size, 0, mel_frames))

  train_step = sxs.jax_train_step(loss, tx)
  state = [jax.tree.map(jnp.copy, params)]
  state.append(tx.init(state[0]))
  step_hlo = train_step.lower(state[0], state[1], batch).compile().as_text()

  def step_once():
    p, o, value = train_step(state[0], state[1], batch)
    state[:] = [p, o]
    return value

  peak = perf.measure_matmul_flops(lib.MATMUL, repeats=8)
  print(f'peak {peak / 1e9:.1f} GFLOP/s (best of 8 warm {lib.MATMUL}^3 float32 matmuls)')
  print(f'== training step, batch {batch_size}')
  print(profiling.profile(step_once, step_hlo, 10, peak,
                          logdir and f'{logdir}/step').report(top=30))
  fwd = jax.jit(forward)
  fwd_hlo = fwd.lower(params, batch).compile().as_text()
  print(f'== forward, batch {batch_size}')
  print(profiling.profile(lambda: fwd(params, batch), fwd_hlo, 10, peak,
                          logdir and f'{logdir}/forward').report(top=20))


if __name__ == '__main__':
  args = sys.argv[1:]
  main(*(args[:1]), *(int(a) for a in args[1:2]), *(args[2:3]))
