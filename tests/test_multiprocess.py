"""Two processes on 127.0.0.1 (jax.distributed, CPU collectives) train like one process.

Each process has one CPU device; the mesh is (data, fsdp) = (1, 2), so params and optimizer
state are sharded across the two processes, each process reads its half of every global
batch from the real input pipeline, and the checkpoint is written by both together. A few
SGD steps (see tests/test_multidevice.py for why SGD) must give the losses and params of one
process with the same global batch, and the checkpoint must restore, iterator included.

This file is also the workers' script: `python -m tests.test_multiprocess ID N PORT OUT`.
"""

import json
import os
import socket
import subprocess
import sys

import numpy as np

from tests.conftest import ROOT
from tests.conftest import SMALLEST
from tests.conftest import xla_flags

NUM_STEPS = 2


def _worker(process_id: int, num_processes: int, port: int, out_dir: str) -> None:
  import jax  # pylint: disable=g-import-not-at-top
  jax.config.update('jax_compilation_cache_dir', os.environ['GMSCAVP_COMPILATION_CACHE'])
  if num_processes > 1:
    jax.distributed.initialize(f'127.0.0.1:{port}', num_processes, process_id)
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  # pylint: disable=g-import-not-at-top
  from gmscavp_jax.core import phases
  from gmscavp_jax.core import state as state_lib
  from gmscavp_jax.core import steps
  from gmscavp_jax.infra import checkpointing, sharding
  from gmscavp_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  from tests.conftest import tiny_config  # pylint: disable=g-import-not-at-top

  config = tiny_config('msa', **SMALLEST, **{'train.batch_size': 8, 'mesh.fsdp_min_size': 0})
  mesh = sharding.make_mesh(data=1, fsdp=-1)
  models = steps.build_models(config)
  txs = {'encoders': optax.sgd(0.05), 'denoiser': optax.sgd(0.05)}
  layout = state_lib.state_shardings(config, models, txs, mesh)
  state = jax.jit(lambda key: steps.init_state(config, models, txs, key),
                  out_shardings=layout)(jax.random.key(0, impl='rbg'))
  train_iter = iter(pipeline.train_loader(config))
  batches = [sharding.global_batch(mesh, pipeline.select(next(train_iter)))
             for _ in range(NUM_STEPS)]
  step = state_lib.jit_train_step(models, txs, config, mesh, phases.CONTRASTIVE, layout).lower(
      state, batches[0], jax.random.key(1)).compile()
  sharding.sync_processes('compiled')  # As the trainer does: compile times differ.
  losses = []
  for batch in batches:
    state, metrics = step(state, batch, jax.random.key(1))
    losses.append(float(metrics['train/loss']))

  ckpt = checkpointing.Checkpointer(os.path.join(out_dir, 'workdir'), keep=2)
  ckpt.save(NUM_STEPS, state, train_iter, config.to_json_best_effort())
  ckpt.wait()
  next_index = next(train_iter)['index'].tolist()  # What the saved iterator must give next.
  fresh_iter = iter(pipeline.train_loader(config))
  restored, restored_step = ckpt.restore_latest(checkpointing.abstract_like(state), fresh_iter)
  ckpt.close()

  whole = multihost_utils.process_allgather(state.params, tiled=True)
  restored_whole = multihost_utils.process_allgather(restored.params, tiled=True)
  if process_id == 0:
    leaves = [np.asarray(x) for x in jax.tree.leaves(whole)]
    np.savez(os.path.join(out_dir, 'params.npz'), *leaves)
    restored_ok = all(np.array_equal(a, np.asarray(b))
                      for a, b in zip(leaves, jax.tree.leaves(restored_whole)))
    print(json.dumps({
        'processes': jax.process_count(), 'devices': jax.device_count(), 'losses': losses,
        'sharded_leaves': sum('fsdp' in s.spec for s in jax.tree.leaves(layout.params)),
        'restored_step': restored_step, 'restored_params_equal': restored_ok,
        'iterator_resumes': next(fresh_iter)['index'].tolist() == next_index}))


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _start(process_id, num_processes, port, out_dir):
  env = dict(os.environ, JAX_PLATFORMS='cpu', XLA_FLAGS=xla_flags())
  return subprocess.Popen(
      [sys.executable, '-m', 'tests.test_multiprocess', str(process_id), str(num_processes),
       str(port), str(out_dir)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
      stderr=subprocess.PIPE, text=True)


def _result(proc) -> dict:
  out, err = proc.communicate(timeout=600)
  assert proc.returncode == 0, err[-3000:]
  # gloo prints its own lines on stdout; the result is the JSON line process 0 prints.
  lines = [line for line in out.splitlines() if line.startswith('{')]
  return json.loads(lines[-1]) if lines else {}


def test_two_processes_match_one(tmp_path):
  port = _free_port()
  (tmp_path / 'two').mkdir()
  (tmp_path / 'one').mkdir()
  workers = [_start(i, 2, port, tmp_path / 'two') for i in range(2)]
  single = _start(0, 1, 0, tmp_path / 'one')
  two, _ = _result(workers[0]), _result(workers[1])
  one = _result(single)
  assert two['processes'] == 2 and two['devices'] == 2 and one['processes'] == 1
  assert two['sharded_leaves'] > 10, two  # Params really are split across the processes.
  np.testing.assert_allclose(two['losses'], one['losses'], rtol=1e-5)
  assert one['losses'][1] != one['losses'][0]
  with np.load(tmp_path / 'one' / 'params.npz') as a, np.load(tmp_path / 'two' / 'params.npz') as b:
    assert len(a.files) == len(b.files)
    for key in a.files:
      np.testing.assert_allclose(a[key], b[key], atol=1e-5, err_msg=key)
  for run in (one, two):
    assert run['restored_step'] == NUM_STEPS
    assert run['restored_params_equal'] and run['iterator_resumes'], run


if __name__ == '__main__':
  _worker(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
