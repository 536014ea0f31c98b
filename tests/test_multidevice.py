"""An MSA train step on 8 fake CPU devices, as meshes (data, fsdp) = (8,1), (4,2) and (2,4),
equals the same step on 1 device. (The contrastive phase: its negatives span the sharded
batch. The UNet's sharded sampling is compared in tests/test_sampling_multidevice.py.)

jax fixes its device count when it starts, so the comparison runs in a subprocess with
XLA_FLAGS set; this file is also that subprocess's script.

Params are compared after SGD steps: the gradient all-reduce sums in another order (~1e-6
relative), and Adam's first update is ~lr * sign(g), which turns that noise into +-lr on
parameters whose gradient is numerically zero. SGD's update is linear in the gradient, so
it shows what sharding changes (float32 noise: ~2e-5 after two steps).
"""

import json
import subprocess
import sys

import numpy as np

from tests.conftest import ROOT, fake_cpu_devices_env

# Two temporal scales (the clip's frames and the whole clip) rather than four: the
# contrastive step compiles in less time for each of the four meshes.
SCALES = {'model.scale_pools': (1, 8), 'model.scale_grids': (1, 1)}


def _compare_meshes() -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np
  import optax
  from gmscavp_jax.core import phases
  from gmscavp_jax.core import state as state_lib
  from gmscavp_jax.core import steps
  from gmscavp_jax.infra import sharding
  from gmscavp_jax.data import pipeline
  from tests.conftest import init_state, tiny_config

  # fsdp_min_size 0: every tiny kernel with a divisible axis is sharded.
  config = tiny_config('msa', **SCALES, **{'train.batch_size': 16, 'mesh.fsdp_min_size': 0})
  local = pipeline.select(next(iter(pipeline.train_loader(config))))
  models = steps.build_models(config)
  txs = {'encoders': optax.sgd(0.05), 'denoiser': optax.sgd(0.05)}
  init = init_state(config, models, txs)
  init = jax.device_get(init)
  out = {}
  for data, fsdp in ((1, 1), (8, 1), (4, 2), (2, 4)):
    mesh = sharding.make_mesh(jax.devices()[:data * fsdp], data=data, fsdp=fsdp)
    layout = state_lib.state_shardings(config, models, txs, mesh)
    state = jax.device_put(init, layout)
    sharded = [s.spec for s in jax.tree.leaves(layout.params) if 'fsdp' in s.spec]
    step = state_lib.jit_train_step(models, txs, config, mesh, phases.CONTRASTIVE, layout)
    batch = sharding.global_batch(mesh, local)
    assert len(batch['frames'].sharding.device_set) == data * fsdp
    losses = []
    for _ in range(2):
      state, metrics = step(state, batch, jax.random.key(0))
      losses.append(float(metrics['train/loss']))
    # The step keeps the FSDP layout (no silent gather into replicated params).
    kept = all(a.sharding.spec == s.spec for a, s in zip(jax.tree.leaves(state.params),
                                                          jax.tree.leaves(layout.params)))
    out[f'{data}x{fsdp}'] = {'losses': losses, 'params': jax.device_get(state.params),
                             'sharded_leaves': len(sharded), 'layout_kept': kept}
  ref = out.pop('1x1')
  result = {'devices': jax.device_count(), 'losses_one': ref['losses']}
  for name, run in out.items():
    diffs = jax.tree.leaves(jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))),
                                         ref['params'], run['params']))
    result[name] = {'losses': run['losses'], 'max_param_diff': max(diffs),
                    'sharded_leaves': run['sharded_leaves'], 'layout_kept': run['layout_kept']}
  return result


def test_eight_device_meshes_match_one_device():
  env = fake_cpu_devices_env(8)
  r = subprocess.run([sys.executable, '-m', 'tests.test_multidevice'], cwd=ROOT, env=env,
                     capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  result = json.loads(r.stdout.strip().splitlines()[-1])
  assert result['devices'] == 8
  assert result['losses_one'][1] < result['losses_one'][0]  # The first step changed params.
  for name in ('8x1', '4x2', '2x4'):
    run = result[name]
    # Sharded sums add in another order: the first loss differs by ~3e-6 relative, and one
    # Adam step (which divides small gradients by their own size) takes the second to ~1.5e-5
    # (measured); a wrong reduction would be off by percents.
    np.testing.assert_allclose(result['losses_one'], run['losses'], rtol=5e-5, err_msg=name)
    assert run['max_param_diff'] < 1e-4, (name, run)
    assert run['layout_kept'], name
  assert result['8x1']['sharded_leaves'] == 0
  assert result['4x2']['sharded_leaves'] > 10 and result['2x4']['sharded_leaves'] > 10, result


if __name__ == '__main__':
  print(json.dumps(_compare_meshes()))
