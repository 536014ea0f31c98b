"""A joint MSA+MSD train step on 8 fake CPU devices equals the same step on 1 device.

(Sampling on 8 devices is compared in tests/test_sampling_multidevice.py.)

jax fixes its device count when it starts, so the comparison runs in a subprocess with
XLA_FLAGS set; this file is also that subprocess's script.

Params are compared after SGD steps: the gradient all-reduce sums in another order (~1e-6
relative), and Adam's first update is ~lr * sign(g), which turns that noise into +-lr on
parameters whose gradient is numerically zero. SGD's update is linear in the gradient, so
it shows what sharding changes (float32 noise: ~2e-5 after two steps).
"""

import json
import os
import subprocess
import sys

import numpy as np

from tests.conftest import ROOT


def _compare_meshes() -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np
  import optax
  from gmscavp_jax import sharding, steps, train
  from gmscavp_jax.data import pipeline
  from tests.conftest import tiny_config

  config = tiny_config('msa_msd', **{'train.batch_size': 16})
  local = pipeline.select(next(iter(pipeline.train_loader(config))))
  out = {}
  for name, devices in (('one', jax.devices()[:1]), ('eight', jax.devices())):
    mesh = sharding.make_mesh(devices)
    models = steps.build_models(config)
    txs = {'encoders': optax.sgd(0.05), 'denoiser': optax.sgd(0.05)}
    state = steps.init_state(config, models, txs, jax.random.key(0, impl='rbg'))
    # A random (not zero-initialised) output layer, so every UNet parameter gets a gradient.
    state = state.replace(params=jax.tree.map(
        lambda p: p + 0.05 * jax.random.normal(jax.random.key(1), p.shape), state.params))
    step = train.jit_train_step(models, txs, config, mesh, 'joint')
    batch = sharding.global_batch(mesh, local)
    assert len(batch['frames'].sharding.device_set) == len(devices)
    losses = []
    for _ in range(2):
      state, metrics = step(state, batch, jax.random.key(0))
      losses.append(float(metrics['train/loss']))
    out[name] = (losses, jax.device_get(state.params))
  (losses1, p1), (losses8, p8) = out['one'], out['eight']
  diffs = jax.tree.leaves(jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))), p1, p8))
  return {'devices': jax.device_count(), 'losses_one': losses1, 'losses_eight': losses8,
          'max_param_diff': max(diffs)}


def test_eight_devices_match_one():
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=8',
             JAX_PLATFORMS='cpu')
  r = subprocess.run([sys.executable, '-m', 'tests.test_multidevice'], cwd=ROOT, env=env,
                     capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  result = json.loads(r.stdout.strip().splitlines()[-1])
  assert result['devices'] == 8
  np.testing.assert_allclose(result['losses_one'], result['losses_eight'], rtol=1e-5,
                             err_msg=str(result))
  assert result['losses_one'][1] < result['losses_one'][0]  # The first step changed params.
  assert result['max_param_diff'] < 1e-4, result


if __name__ == '__main__':
  print(json.dumps(_compare_meshes()))
