"""Does the optimizer cost the side-by-side step anything? (docs/speed.md)

  python docs/probes/optimizer_share.py [ROUNDS]   (from the repository root; default 5)

Alternates, in one process, three programs of the side-by-side UNet at batch 32 with the
loss in 4 chunks of 8 (`docs/probes/unet_chunks.py`'s): the training step with clipping +
Adam as the project builds them ('chain'), the same optimizer under `optax.flatten` (one
vector for all leaves, 'flatten'), and the loss's gradient alone ('grads'). Prints each
round's ms per call and the medians.
"""

import importlib
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path[:0] = [os.getcwd(), os.path.dirname(os.path.abspath(__file__))]  # the repository root
import unet_chunks  # pylint: disable=wrong-import-position
from gmscavp_jax.core import steps  # pylint: disable=wrong-import-position
from gmscavp_jax.models import unet as unet_lib  # pylint: disable=wrong-import-position
from gmscavp_jax.tools import sidebyside_lib as lib  # pylint: disable=wrong-import-position
from gmscavp_jax.tools import torch_sidebyside as sxs  # pylint: disable=wrong-import-position

CHUNK = 8


def main(rounds=5):
  config = importlib.import_module('configs.msa_msd').get_config('runlocal')
  mel = steps.num_mel_frames(config)
  params = jax.device_put(lib.randomised_params(config, 0, mel))
  unet = unet_lib.build_unet(config)
  # The side-by-side's loss: the UNet in chunks of unet.batch_chunk (8 on one CPU device).
  _, loss, tx = sxs.jax_functions(config)
  batch = jax.device_put(lib.make_batch(config, 32, 0, mel))
  programs = {}
  for name, t in (('chain', tx), ('flatten', optax.flatten(tx))):
    _, step = unet_chunks.programs(config, unet, t, CHUNK)
    p = jax.tree.map(jnp.copy, params)
    programs[name] = (step, [p, t.init(p)])

  grads = jax.jit(jax.value_and_grad(loss))
  times = {name: [] for name in (*programs, 'grads')}
  for r in range(rounds):
    for name, (step, state) in programs.items():

      def one(step=step, state=state):
        p, o, _ = step(state[0], state[1], batch)
        state[:] = [p, o]
        jax.block_until_ready((p, o))

      times[name].append(unet_chunks.timed_ms(one))
    times['grads'].append(unet_chunks.timed_ms(
        lambda: jax.block_until_ready(grads(params, batch))))
    print(r, {k: round(v[-1], 1) for k, v in times.items()}, 'ms', flush=True)
  print('median', {k: round(float(np.median(v)), 1) for k, v in times.items()}, 'ms')


if __name__ == '__main__':
  main(*(int(a) for a in sys.argv[1:2]))
