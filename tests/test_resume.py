"""Faults: a run killed with SIGKILL at a random step, then preempted with SIGTERM, then
finished, ends with the params (and their EMA) of an uninterrupted run (restart is the
default), across the two stages of 'frozen' training."""

import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import orbax.checkpoint as ocp

from gmscavp_jax.infra import metrics_io
from gmscavp_jax import train
from tests.conftest import ROOT, SMALLEST, tiny_config

NUM_STEPS = 12
EMA_DECAY = 0.9


def _command(workdir):
  config = tiny_config('msa', **SMALLEST)
  args = [f'--config.{g}.{k}={v}' for g, k, v in (
      ('train', 'num_steps', NUM_STEPS), ('train', 'decay_steps', NUM_STEPS),
      ('train', 'checkpoint_every_steps', 3), ('train', 'eval_every_steps', 100),
      ('data', 'num_frames', 8), ('data', 'image_size', 32), ('data', 'worker_count', 0),
      ('train', 'batch_size', 8), ('train', 'warmup_steps', 1), ('train', 'log_every_steps', 1),
      ('model', 'embed_dim', 16), ('eval', 'num_test_clips', 16), ('eval', 'batch_size', 8),
      # No generation at the final evaluation: this test is about the training state.
      ('eval', 'num_generate_clips', 0), ('eval', 'num_summary_clips', 0),
      ('unet', 'num_heads', 2), ('train', 'ema_decay', EMA_DECAY),
      # The generator stage trains on cached video features, computed again on a resume.
      ('train', 'cache_video_features', True),
      ('diffusion', 'encoder_steps', NUM_STEPS // 2))]
  args += [f'--config.{g}.{k}={",".join(map(str, config[g][k]))}'
           for g, k in (('model', 'scale_pools'), ('model', 'scale_grids'),
                        ('model', 'video_widths'), ('model', 'audio_widths'),
                        ('unet', 'widths'), ('unet', 'attention_levels'),
                        ('unet', 'level_scales'), ('unet', 'stem_patch'))]
  return [sys.executable, '-m', 'gmscavp_jax.main', '--config=configs/msa.py:runlocal',
          f'--workdir={workdir}', *args]


def _start(workdir, cache_dir):
  env = dict(os.environ, GMSCAVP_COMPILATION_CACHE=cache_dir)
  return subprocess.Popen(_command(workdir), cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)


def _train_rows(workdir) -> dict:
  path = os.path.join(workdir, 'metrics.jsonl')
  if not os.path.exists(path):
    return {}
  return {row['step']: row for row in metrics_io.read_jsonl(path) if 'train/loss' in row}


def _wait_for_step(proc, workdir, step) -> int:
  """Polls metrics.jsonl until a step >= `step` is logged; returns the newest logged step."""
  deadline = time.time() + 600
  while time.time() < deadline:
    logged = max(_train_rows(workdir), default=0)
    if logged >= step:
      return logged
    assert proc.poll() is None, proc.stderr.read()[-3000:]
    time.sleep(0.01)
  raise TimeoutError(f'step {step} not reached in {workdir}')


def _latest_params(workdir):
  """(step, {'params': ..., 'ema_params': ...}) of the newest checkpoint."""
  directory = os.path.join(workdir, 'checkpoints')
  step = max(int(d) for d in os.listdir(directory) if d.isdigit())
  state = ocp.StandardCheckpointer().restore(os.path.join(directory, str(step), 'state'))
  return step, {k: state[k] for k in ('params', 'ema_params')}


def test_sigkill_then_sigterm_then_resume_matches_an_uninterrupted_run(tmp_path):
  cache = str(tmp_path / 'xla_cache')
  straight_dir, resumed_dir = str(tmp_path / 'straight'), str(tmp_path / 'resumed')
  straight = _start(straight_dir, cache)
  assert straight.wait(timeout=600) == 0, straight.stderr.read()[-3000:]

  # SIGKILL at a random step: wherever it lands (mid-step, mid-save), the next run restarts
  # from the last complete checkpoint.
  kill_at = random.Random().randint(2, NUM_STEPS // 2 - 1)
  proc = _start(resumed_dir, cache)
  killed_after = _wait_for_step(proc, resumed_dir, kill_at)
  proc.kill()
  assert proc.wait() == -signal.SIGKILL
  assert killed_after < NUM_STEPS, f'the run ended before SIGKILL (kill_at={kill_at})'

  # SIGTERM (a preemption notice) once the resumed run has taken a step: it saves and exits 143.
  # (Rows up to killed_after are the killed run's; a newer one proves this run is stepping.)
  proc = _start(resumed_dir, cache)
  term_after = _wait_for_step(proc, resumed_dir, killed_after + 1)
  proc.send_signal(signal.SIGTERM)
  assert proc.wait(timeout=600) == train.PREEMPTED_EXIT, f'kill_at={kill_at}'
  saved, _ = _latest_params(resumed_dir)
  assert term_after <= saved < NUM_STEPS, (term_after, saved)

  final = _start(resumed_dir, cache)
  assert final.wait(timeout=600) == 0, final.stderr.read()[-3000:]
  step_a, params_a = _latest_params(straight_dir)
  step_b, params_b = _latest_params(resumed_dir)
  assert step_a == step_b == NUM_STEPS
  # The second half is the generator stage: the frozen encoders' EMA is their params.
  for group, equal in (('encoders', True), ('denoiser', False)):
    ema, raw = _flat(params_a['ema_params'][group]), _flat(params_a['params'][group])
    assert all(np.array_equal(ema[k], raw[k]) for k in raw) == equal, group
  for path, a in _flat(params_a).items():
    np.testing.assert_allclose(_flat(params_b)[path], a, rtol=1e-6, atol=1e-7,
                               err_msg=f'{path} (kill_at={kill_at})')
  # The logged curves agree too, across the phase boundary at NUM_STEPS // 2.
  rows_a, rows_b = _train_rows(straight_dir), _train_rows(resumed_dir)
  assert sorted(rows_b) == list(range(1, NUM_STEPS + 1))
  assert 'train/loss/msd_loss' in rows_a[NUM_STEPS] and 'train/loss/msa' not in rows_a[NUM_STEPS]
  for step in range(1, NUM_STEPS + 1):
    np.testing.assert_allclose(rows_b[step]['train/loss'], rows_a[step]['train/loss'],
                               rtol=1e-6, err_msg=f'step {step}')


def _flat(tree, prefix=''):
  if isinstance(tree, dict):
    return {k: v for key, sub in tree.items() for k, v in _flat(sub, f'{prefix}/{key}').items()}
  return {prefix: np.asarray(tree)}
