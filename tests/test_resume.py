"""Restart is the default: a new process on a workdir continues it exactly, across phases."""

import os
import subprocess
import sys

import numpy as np

from gmscavp_jax import metrics_io
from tests.conftest import ROOT, tiny_config


def _run_main(workdir, num_steps, cache_dir):
  config = tiny_config('msa')
  args = [f'--config.{g}.{k}={v}' for g, k, v in (
      ('train', 'num_steps', num_steps), ('train', 'decay_steps', 6),
      ('train', 'checkpoint_every_steps', 3), ('train', 'eval_every_steps', 100),
      ('data', 'num_frames', 8), ('data', 'image_size', 32), ('data', 'worker_count', 0),
      ('train', 'batch_size', 8), ('train', 'warmup_steps', 1), ('train', 'log_every_steps', 1),
      ('model', 'embed_dim', 16), ('eval', 'num_test_clips', 16), ('eval', 'batch_size', 8),
      ('eval', 'num_generate_clips', 8), ('eval', 'sample_steps', 4),
      ('eval', 'num_summary_clips', 2), ('unet', 'num_heads', 2),
      ('diffusion', 'encoder_steps', 4))]
  args += [f'--config.{g}.{k}={",".join(map(str, config[g][k]))}'
           for g, k in (('model', 'scale_pools'), ('model', 'scale_grids'),
                        ('model', 'video_widths'), ('model', 'audio_widths'),
                        ('unet', 'widths'), ('unet', 'attention_levels'),
                        ('unet', 'level_scales'), ('unet', 'stem_patch'))]
  env = dict(os.environ, GMSCAVP_COMPILATION_CACHE=cache_dir)
  r = subprocess.run([sys.executable, '-m', 'gmscavp_jax.main', '--config=configs/msa.py:runlocal',
                      f'--workdir={workdir}', *args], cwd=ROOT, env=env, capture_output=True,
                     text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  return {row['step']: row for row in metrics_io.read_jsonl(os.path.join(workdir, 'metrics.jsonl'))
          if 'train/loss' in row}


def test_resume_after_restart_matches_an_uninterrupted_run(tmp_path):
  # msa.py trains encoders for 4 steps, then the denoiser alone: the restart at step 3
  # resumes inside the first phase and runs across the phase boundary.
  cache = str(tmp_path / 'xla_cache')
  straight = _run_main(str(tmp_path / 'straight'), 6, cache)
  _run_main(str(tmp_path / 'resumed'), 3, cache)  # Stops at step 3, checkpoint saved.
  resumed = _run_main(str(tmp_path / 'resumed'), 6, cache)  # A new process continues.
  assert sorted(resumed) == [1, 2, 3, 4, 5, 6]
  assert 'train/loss/msd_loss' in straight[5] and 'train/loss/msa' not in straight[5]
  for step in (4, 5, 6):
    assert set(resumed[step]) == set(straight[step])
    for key in straight[step]:
      if key.startswith('train/') and 'per_sec' not in key:
        np.testing.assert_allclose(resumed[step][key], straight[step][key], rtol=1e-6,
                                   err_msg=f'{key} at step {step}')
