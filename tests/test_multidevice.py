"""A train step on 8 fake CPU devices equals the same step on 1 device (same global batch).

jax fixes its device count when it starts, so the comparison runs in a subprocess with
XLA_FLAGS set; this file is also that subprocess's script.
"""

import json
import os
import subprocess
import sys

from tests.conftest import ROOT


def _compare_meshes() -> dict:
  import functools  # pylint: disable=g-import-not-at-top
  import jax
  import numpy as np
  from gmscavp_jax import sharding, steps, train
  from gmscavp_jax.data import pipeline
  from tests.conftest import tiny_config

  config = tiny_config('msa', **{'train.batch_size': 16})
  local = pipeline.select(next(iter(pipeline.train_loader(config))))
  out = {}
  for name, devices in (('one', jax.devices()[:1]), ('eight', jax.devices())):
    mesh = sharding.make_mesh(devices)
    model, tx, state = train.build(config, mesh)
    repl, batch_sh = sharding.replicated(mesh), sharding.batch_sharded(mesh)
    step = jax.jit(functools.partial(steps.train_step, model=model, tx=tx, config=config),
                   in_shardings=(repl, batch_sh, repl), out_shardings=(repl, repl))
    batch = sharding.global_batch(mesh, local)
    assert len(batch['frames'].sharding.device_set) == len(devices)
    state, metrics = step(state, batch, jax.random.key(0))
    state, metrics = step(state, batch, jax.random.key(0))
    out[name] = (float(metrics['train/loss']), jax.device_get(state.params))
  (loss1, p1), (loss8, p8) = out['one'], out['eight']
  diffs = jax.tree.leaves(jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))), p1, p8))
  return {'devices': jax.device_count(), 'loss_one': loss1, 'loss_eight': loss8,
          'max_param_diff': max(diffs)}


def test_eight_devices_match_one():
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=8',
             JAX_PLATFORMS='cpu')
  r = subprocess.run([sys.executable, '-m', 'tests.test_multidevice'], cwd=ROOT, env=env,
                     capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  result = json.loads(r.stdout.strip().splitlines()[-1])
  assert result['devices'] == 8
  assert abs(result['loss_one'] - result['loss_eight']) < 1e-5, result
  assert result['max_param_diff'] < 1e-5, result


if __name__ == '__main__':
  print(json.dumps(_compare_meshes()))
