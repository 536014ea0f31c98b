"""The side-by-side UNet's training step and forward at one batch, in one call against chunks.

  python docs/probes/unet_chunks.py [CONFIG] [BATCH] [CHUNKS ...]
  (defaults: configs/msa_msd.py's runlocal, 32, chunks 1 2 4 8)

The programs are `tools/torch_sidebyside`'s JAX ones (the MSD UNet alone, random params for
every leaf, eq. 7's v-prediction loss, its gradient, global-norm clipping and Adam, params
and optimizer state donated), with the UNet called by `unet.apply_in_chunks` on BATCH / m
examples at a time for each m of CHUNKS. Prints each step's compile time, the largest
difference of the forward from one call's, then 4 alternating rounds of at least 2 s per
program and their medians in ms (docs/speed.md, "The training loss in chunks").
"""

import functools
import importlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from gmscavp_jax.core import steps
from gmscavp_jax.models import unet as unet_lib
from gmscavp_jax.tools import sidebyside_lib as lib
from gmscavp_jax.tools import torch_sidebyside as sxs


def programs(config, unet, tx, chunk):
  """(forward, train_step) with the UNet called on `chunk` examples at a time (0: one call)."""

  def forward(p, b, x=None):
    return unet_lib.apply_in_chunks(functools.partial(unet.apply, {'params': p}), chunk,
                                    b['x0'] if x is None else x, b['t'], lib.scales_of(b),
                                    drop_condition=b['drop'])

  def loss(p, b):
    a, s = b['a'][:, None, None], b['s'][:, None, None]
    pred = forward(p, b, a * b['x0'] + s * b['eps'])
    return jnp.mean(jnp.square(pred - (a * b['eps'] - s * b['x0'])))

  return jax.jit(forward), sxs.jax_train_step(loss, tx)


def timed_ms(fn, seconds=2.0):
  """Mean ms per call of fn over at least `seconds`, after 2 warm calls."""
  for _ in range(2):
    fn()
  t0, n = time.perf_counter(), 0
  while time.perf_counter() - t0 < seconds:
    fn()
    n += 1
  return (time.perf_counter() - t0) / n * 1e3


def main(config_name='msa_msd', batch_size=32, *chunk_counts):
  config = importlib.import_module(f'configs.{config_name}').get_config('runlocal')
  mel = steps.num_mel_frames(config)
  params = jax.device_put(lib.randomised_params(config, 0, mel))
  unet = unet_lib.build_unet(config)
  _, _, tx = sxs.jax_functions(config)
  batch = jax.device_put(lib.make_batch(config, batch_size, 0, mel))
  fwd, step, state = {}, {}, {}
  for m in chunk_counts or (1, 2, 4, 8):
    fwd[m], step[m] = programs(config, unet, tx, 0 if m == 1 else batch_size // m)
    p = jax.tree.map(jnp.copy, params)
    state[m] = [p, tx.init(p)]
    t0 = time.perf_counter()
    step[m].lower(state[m][0], state[m][1], batch).compile()
    print(f'{m} chunk(s): step compile {time.perf_counter() - t0:.1f} s', flush=True)
  first = min(fwd)
  ref = np.asarray(fwd[first](params, batch))
  for m in fwd:
    diff = np.max(np.abs(np.asarray(fwd[m](params, batch)) - ref))
    print(f'{m} chunk(s): forward max |diff| from {first} chunk(s) {diff:.2e}')
  times = {m: {'forward': [], 'step': []} for m in fwd}
  for r in range(4):
    for m in fwd:
      times[m]['forward'].append(timed_ms(lambda: fwd[m](params, batch).block_until_ready()))

      def one(m=m):
        p, o, _ = step[m](state[m][0], state[m][1], batch)
        state[m][:] = [p, o]
        jax.block_until_ready((p, o))

      times[m]['step'].append(timed_ms(one))
    print(f'round {r}:', {m: (round(t['forward'][-1], 1), round(t['step'][-1], 1))
                          for m, t in times.items()}, '(forward, step) ms', flush=True)
  for m, t in times.items():
    print(f'{m} chunk(s): forward {np.median(t["forward"]):.1f} ms, '
          f'step {np.median(t["step"]):.1f} ms (median of 4 rounds)')


if __name__ == '__main__':
  args = sys.argv[1:]
  main(*(args[:1]), *(int(a) for a in args[1:]))
