"""Times the two kernel gradients of models/conv.py, per op and inside the UNet.

  python -m gmscavp_jax.tools.conv_bench --shapes=32x40x8x32x32,2x1000x32x128x128
  python -m gmscavp_jax.tools.conv_bench --shapes= --unet_config=configs/msa_msd.py --rounds=4

Per op: for each B x H x W x C x F, the gradient of one 3x3 'SAME' convolution with respect
to its kernel (and to both inputs), XLA's convolution gradient against the im2col matmul of
`conv.conv_matmul_grad`, each jitted alone and timed alternately, best of --calls per round.
With --unet_config: the UNet's forward and backward at --unet_batch with every 3x3 conv on
XLA's kernel gradient against the 'auto' rule, both compiled in one process and timed
alternately for --rounds rounds. Docs: docs/speed.md, "Convolution weight gradients".
"""

import importlib
import os
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from gmscavp_jax import cli
from gmscavp_jax.core import steps
from gmscavp_jax.models import conv
from gmscavp_jax.models import unet

_SHAPES = flags.DEFINE_list('shapes', ['32x40x8x32x32', '2x1000x32x128x128'],
                            'Convolutions B x H x W x C x F to time alone.')
_CALLS = flags.DEFINE_integer('calls', 10, 'Timed calls per round (after one warm-up).')
_ROUNDS = flags.DEFINE_integer('rounds', 2, 'Rounds of alternating timings.')
_UNET_CONFIG = flags.DEFINE_string('unet_config', None, 'configs/NAME.py[:variant]: also time '
                                   "its UNet's forward and backward.")
_UNET_BATCH = flags.DEFINE_integer('unet_batch', 2, 'Batch of the UNet timing.')


def _best_of(fn, args, calls: int) -> float:
  """Seconds of the fastest of `calls` calls of fn(*args)."""
  times = []
  for _ in range(calls):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t0)
  return min(times)


def time_conv(shape: tuple, calls: int, rounds: int) -> dict:
  """{'xla'|'matmul': {'kernel'|'both': [seconds per round]}} for one (B,H,W,C,F) conv."""
  b, h, w, c, f = shape
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((b, h, w, c)), jnp.float32)
  kernel = jnp.asarray(rng.standard_normal((3, 3, c, f)) * 0.1, jnp.float32)
  fns = {'xla': conv._conv, 'matmul': conv.conv_matmul_grad}  # pylint: disable=protected-access
  progs = {name: {'kernel': jax.jit(jax.grad(lambda x, k, fn=fn: jnp.sum(fn(x, k) ** 2), 1)),
                  'both': jax.jit(jax.grad(lambda x, k, fn=fn: jnp.sum(fn(x, k) ** 2), (0, 1)))}
           for name, fn in fns.items()}
  times = {name: {what: [] for what in p} for name, p in progs.items()}
  for prog in progs.values():
    for fn in prog.values():
      jax.block_until_ready(fn(x, kernel))
  for _ in range(rounds):
    for name, prog in progs.items():
      for what, fn in prog.items():
        times[name][what].append(_best_of(fn, (x, kernel), calls))
  return times


def time_unet(config_arg: str, batch: int, rounds: int) -> dict:
  """{'xla'|'auto': [seconds per round]} of jax.grad of the config's UNet at `batch`."""
  path, _, variant = config_arg.partition(':')
  name = os.path.basename(path).removesuffix('.py')
  config = importlib.import_module(f'configs.{name}').get_config(variant or None)
  model = unet.build_unet(config)
  _, mel = steps.dummy_inputs(config, batch)
  x = jax.random.normal(jax.random.key(0), mel.shape)
  scales = [jax.random.normal(jax.random.key(i + 1), s.shape)
            for i, s in enumerate(steps.dummy_video_scales(config, batch))]
  t = jnp.zeros((batch,), jnp.int32)
  params = jax.jit(model.init)(jax.random.key(0), x[:1], t[:1], [s[:1] for s in scales])
  # Random weights everywhere: the zero-initialised output layers would zero most gradients.
  params = jax.tree.map(lambda p: p + 0.02 * jax.random.normal(jax.random.key(p.size), p.shape),
                        params['params'])
  loss = lambda p: jnp.sum(model.apply({'params': p}, x, t, scales) ** 2)
  progs = {}
  for rule, min_channels in (('xla', None), ('auto', conv.MATMUL_MIN_CHANNELS)):
    saved = conv.MATMUL_MIN_CHANNELS
    conv.MATMUL_MIN_CHANNELS = min_channels or 1 << 30  # Read at trace time.
    progs[rule] = jax.jit(jax.grad(loss)).lower(params).compile()
    conv.MATMUL_MIN_CHANNELS = saved
  times = {rule: [] for rule in progs}
  for prog in progs.values():
    jax.block_until_ready(prog(params))
  for _ in range(rounds):
    for rule, prog in progs.items():
      times[rule].append(_best_of(prog, (params,), 1))
  return times


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  for text in _SHAPES.value:
    shape = tuple(int(v) for v in text.split('x'))
    if len(shape) != 5:
      raise app.UsageError(f'--shapes: {text!r} is not BxHxWxCxF')
    times = time_conv(shape, _CALLS.value, _ROUNDS.value)
    print(f'{text}: ' + '  '.join(
        f"{name} {what} {'/'.join(f'{s * 1e3:.1f}' for s in v)} ms"
        for name, whats in times.items() for what, v in whats.items()), flush=True)
  if _UNET_CONFIG.value:
    times = time_unet(_UNET_CONFIG.value, _UNET_BATCH.value, _ROUNDS.value)
    print(f'UNet of {_UNET_CONFIG.value}, forward + backward at batch {_UNET_BATCH.value}: ' +
          '  '.join(f"{rule} best {min(v):.2f} s, median {np.median(v):.2f} s"
                    for rule, v in times.items()), flush=True)


if __name__ == '__main__':
  cli.run(main)
