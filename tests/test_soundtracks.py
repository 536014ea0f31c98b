"""Whole soundtracks and fine-tuning through the commands, on a tiny trained msa workdir:
`generate --video` of any length, `generate --videos=DIR` (bad files, a resumed run), and
`main` with train.init_from (frozen encoders, a model that does not fit).

Apart from test_train.py so that the two test workers share the long end-to-end tests; the
trained workdir (conftest's msa_workdir) is one for both files.
"""

import json
import os
import subprocess
import sys

import av
import jax
import numpy as np
import pytest
import scipy.io.wavfile

from gmscavp_jax.core import config_io
from gmscavp_jax.core import feature_cache
from gmscavp_jax.core import state as state_lib
from gmscavp_jax.data import media_writing
from gmscavp_jax.data import pipeline
from gmscavp_jax.infra import errors
from gmscavp_jax.infra import sharding
from gmscavp_jax import train
from tests.conftest import ROOT, tiny_config


def _generate(workdir, *flags):
  return subprocess.run([sys.executable, '-m', 'gmscavp_jax.generate', f'--workdir={workdir}',
                         '--sampler=ddim', '--steps=3', *flags], cwd=ROOT,
                        capture_output=True, text=True, timeout=300)


def _two_clips(config, path):
  clips = [pipeline.make_source(config, 'test')[i] for i in (0, 1)]
  media_writing.write_video(path, np.concatenate([c['frames'] for c in clips]), config.data.fps,
                            np.concatenate([c['waveform'] for c in clips]),
                            config.audio.sample_rate)
  return clips


def test_generate_cli_on_an_mp4_and_its_errors(msa_workdir, tmp_path):
  workdir, _ = msa_workdir
  config = config_io.load_config(workdir)
  video = str(tmp_path / 'long.mp4')
  _two_clips(config, video)  # Twice the clip length, with sound.
  # A span of one clip: the single-clip outputs, with the spectrogram beside the real one.
  out_dir = tmp_path / 'out'
  r = _generate(workdir, f'--video={video}', f'--output_dir={out_dir}', '--start_seconds=0.5',
                '--duration=1.0')
  assert r.returncode == 0, r.stderr[-3000:]
  assert sorted(os.listdir(out_dir)) == ['long.mp4', 'long.wav', 'long_spectrogram.png']
  # The whole video: overlapping windows (8 frames, hop 6: 3 of them) give one soundtrack,
  # here with double guidance and the neural vocoder (each trained on first use), windows
  # 0 and 2 in one call, then 1 (--schedule=two_pass; the folder test runs sequential).
  whole = tmp_path / 'whole'
  r = _generate(workdir, f'--video={video}', f'--output_dir={whole}', '--align_guidance=2',
                '--vocoder=neural', f'--evaluator_dir={tmp_path / "evaluators"}',
                '--schedule=two_pass')
  assert r.returncode == 0, r.stderr[-3000:]
  assert '2.0 s of audio from 3 windows (neural vocoder)' in r.stdout
  rate, wave = scipy.io.wavfile.read(whole / 'long.wav')
  assert rate == config.audio.sample_rate and len(wave) == 2 * rate
  with av.open(str(whole / 'long.mp4')) as container:
    assert container.streams.video[0].frames == 16 and len(container.streams.audio) == 1
  # Not a video: one line naming the file and the reason, exit status 1.
  junk = tmp_path / 'junk.mp4'
  junk.write_bytes(b'not a video at all')
  r = _generate(workdir, f'--video={junk}', f'--output_dir={out_dir}')
  assert r.returncode == 1, r.stderr[-2000:]
  assert 'junk.mp4' in r.stderr and 'cannot be decoded' in r.stderr
  assert 'Traceback' not in r.stderr


def test_generate_for_a_folder_skips_bad_files_and_resumes(msa_workdir, tmp_path):
  workdir, _ = msa_workdir
  config = config_io.load_config(workdir)
  folder = tmp_path / 'videos'
  (folder / 'sub').mkdir(parents=True)
  _two_clips(config, str(folder / 'two.mp4'))
  record = pipeline.make_source(config, 'test')[2]
  media_writing.write_video(str(folder / 'sub' / 'one.mov'), record['frames'], config.data.fps)
  media_writing.write_video(str(folder / 'sub' / 'half.mp4'), record['frames'][:4],
                            config.data.fps)
  (folder / 'empty.mp4').write_bytes(b'')
  data = (folder / 'two.mp4').read_bytes()
  (folder / 'sub' / 'cut.mp4').write_bytes(data[:len(data) // 2])
  (folder / 'notes.txt').write_text('not a video')
  out = tmp_path / 'out'
  r = _generate(workdir, f'--videos={folder}', f'--output_dir={out}', '--batch=2')
  assert r.returncode == 0, r.stderr[-3000:]
  assert '5 videos: 3 done now, 0 skipped' in r.stdout and '2 failed' in r.stdout
  with open(out / 'report.json') as f:
    report = json.load(f)
  assert sorted(os.path.basename(e['video']) for e in report['failed']) == ['cut.mp4',
                                                                            'empty.mp4']
  assert report['windows'] == 3 + 1 + 1
  for name, seconds in (('two', 2.0), ('sub/one', 1.0), ('sub/half', 0.5)):
    rate, wave = scipy.io.wavfile.read(out / f'{name}.wav')
    assert len(wave) == seconds * rate and (out / f'{name}.mp4').exists()
  r = _generate(workdir, f'--videos={folder}', f'--output_dir={out}')
  assert r.returncode == 0, r.stderr[-3000:]
  assert '5 videos: 0 done now, 5 skipped' in r.stdout and '0 windows' in r.stdout


def _train_losses(workdir) -> dict:
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    rows = [json.loads(line) for line in f]
  return {r['step']: r['train/loss'] for r in rows if 'train/loss' in r}


def test_fine_tune_from_another_run_with_frozen_encoders(msa_workdir, tmp_path, monkeypatch):
  """train.init_from: the source's newest params start the run, the optimizer is fresh; with
  diffusion.encoder_steps=0 only the denoiser trains, so the encoders stay the source's.
  train.cache_video_features trains the same denoiser on features computed once."""
  source, _ = msa_workdir
  source_params = state_lib.restore_params(
      source, config_io.load_config(source),
      sharding.mesh_from_config(config_io.load_config(source)))[1]
  # Another config (msa_msd, made 'frozen') on another synthetic world (data.seed=1).
  fields = {'train.init_from': source, 'diffusion.training': 'frozen',
            'diffusion.encoder_steps': 0, 'data.seed': 1, 'train.num_steps': 2,
            'train.eval_every_steps': 100, 'eval.num_generate_clips': 0,
            'eval.num_summary_clips': 0}  # No sampling: this test is about training.
  # Nor the end-of-run evaluation: its retrieval numbers are not what is checked here.
  monkeypatch.setattr(train, 'evaluate_and_record', lambda *args: {})
  computed, compute = [], feature_cache.FeatureCache.compute
  monkeypatch.setattr(feature_cache.FeatureCache, 'compute',
                      lambda self, params, clips: computed.append(len(clips)) or compute(
                          self, params, clips))
  tuned = {}
  for cache in (False, True):
    config = tiny_config('msa_msd', **fields, **{'train.cache_video_features': cache})
    workdir = str(tmp_path / f'tuned_cache_{cache}')
    train.train_and_evaluate(config, workdir)
    tuned[cache] = state_lib.restore_params(workdir, config, sharding.mesh_from_config(config))
    tuned[cache] += (_train_losses(workdir),)
  assert tuned[False][2] == tuned[True][2] == 2
  # Once, by the cached run: the clips its two steps of 8 read, of the 200000.
  assert len(computed) == 1 and 8 < computed[0] <= 16, computed
  same = jax.tree.map(np.array_equal, tuned[False][1]['encoders'], source_params['encoders'])
  assert all(jax.tree.leaves(same))
  moved = jax.tree.map(lambda a, b: not np.array_equal(a, b), tuned[False][1]['denoiser'],
                       source_params['denoiser'])
  assert any(jax.tree.leaves(moved))
  # The cache changes where the features come from, not the training (float32 noise: the
  # features are computed by another program than the step's).
  np.testing.assert_allclose(list(tuned[True][3].values()), list(tuned[False][3].values()),
                             rtol=1e-5)
  for got, want in zip(jax.tree.leaves(tuned[True][1]), jax.tree.leaves(tuned[False][1])):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
  # The runs below fail before the trainer builds or compiles anything.
  monkeypatch.setattr(state_lib, 'build', lambda *args: pytest.fail(
      'the trainer built a state before checking the config and train.init_from'))
  with pytest.raises(errors.ConfigError, match='train.cache_video_features'):
    train.train_and_evaluate(tiny_config('msa_msd', **{'train.cache_video_features': True}),
                             str(tmp_path / 'joint'))
  # Another model's params do not fit: one error naming the differing field.
  wider = tiny_config('msa', **{'train.init_from': source, 'unet.widths': (16, 48)})
  with pytest.raises(errors.ConfigError, match=r'init_from.*unet\.widths: \(16, 32\) vs '
                                                r'\(16, 48\)'):
    train.train_and_evaluate(wider, str(tmp_path / 'wider'))
  with pytest.raises(errors.ConfigError, match='train.init_from'):
    train.train_and_evaluate(tiny_config('msa', **{'train.init_from': str(tmp_path)}),
                             str(tmp_path / 'none'))
