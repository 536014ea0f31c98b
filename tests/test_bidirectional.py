"""Bidirectional diffusion: interval 0 is today's training, the a2v denoiser's shapes, a2v
steps on every k-th step only, and a2v generation from the CLI."""

import functools
import json
import os
import shutil
import subprocess
import sys

import av
import chex
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from configs import msa_msd
from configs import msd
from gmscavp_jax import train
from gmscavp_jax.core import config_io
from gmscavp_jax.core import config_validation
from gmscavp_jax.core import msd as msd_lib
from gmscavp_jax.core import phases
from gmscavp_jax.core import state as state_lib
from gmscavp_jax.core import steps
from gmscavp_jax.data import media
from gmscavp_jax.data import media_writing
from gmscavp_jax.data import pipeline
from gmscavp_jax.inference import audio_to_video
from gmscavp_jax.infra import checkpointing
from gmscavp_jax.infra import errors
from gmscavp_jax.infra import metrics_io
from gmscavp_jax.infra import sharding
from gmscavp_jax.losses import contrastive
from tests.conftest import ROOT, SMALLEST_A2V, tiny_config

INTERVAL = 2


def _config(interval: int = INTERVAL):
  # Two steps: step 1 is a plain joint step, step 2 (2 % 2 == 0) also trains the a2v
  # denoiser. No v2a generation (tests/test_train.py covers it) to keep the compile count low.
  return tiny_config('msa_msd', **SMALLEST_A2V, **{
      'train.bidirectional_interval': interval, 'train.num_steps': 2,
      'train.checkpoint_every_steps': 1, 'train.eval_every_steps': 2, 'train.keep_checkpoints': 2,
      'eval.num_generate_clips': 0, 'eval.num_summary_clips': 0})


@pytest.fixture(scope='module')
def bi_workdir(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('bidirectional'))
  return workdir, train.train_and_evaluate(_config(), workdir)


@pytest.fixture(scope='module')
def bi_states(bi_workdir):
  """The run's freshly initialised state and its checkpoints {1: state, 2: state}."""
  workdir, _ = bi_workdir
  config = config_io.load_config(workdir)
  _, _, fresh = state_lib.build(config, sharding.mesh_from_config(config))
  manager = ocp.CheckpointManager(checkpointing.checkpoint_dir(workdir),
                                  item_names=checkpointing.ITEMS)
  saved = {step: manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(checkpointing.abstract_like(fresh))))['state']
           for step in (1, 2)}
  manager.close()
  return fresh, saved


def _updates(opt_state) -> int:
  """The update count of one group's optimizer state (every 'count' leaf agrees)."""
  counts = {int(leaf) for path, leaf in jax.tree_util.tree_flatten_with_path(opt_state)[0]
            if 'count' in jax.tree_util.keystr(path)}
  assert len(counts) == 1, counts
  return counts.pop()


def _equal(a, b) -> bool:
  return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_interval_0_is_todays_training():
  config = _config(interval=0)
  models, txs = steps.build_models(config), steps.make_optimizers(config)
  assert models.video_denoiser is None and sorted(txs) == ['denoiser', 'encoders']
  assert {steps.train_phase(config, s) for s in range(1, 9)} == {phases.JOINT}
  state = jax.eval_shape(functools.partial(steps.init_state, config, models, txs),
                         jax.random.key(0))
  assert sorted(state.params) == ['denoiser', 'encoders']
  # Workdirs saved before the field existed read as interval 0.
  old = config.copy_and_resolve_references()
  del old.train['bidirectional_interval']
  assert steps.build_models(config_io.upgrade(old)).video_denoiser is None


def test_joint_loss_without_a2v_is_exactly_todays(bi_workdir, bi_states):
  """The interval-0 joint loss is L_MSA + L_MSD computed without any a2v code, bit for bit,
  and a bidirectional run's non-a2v step (step 1) has that same loss."""
  workdir, _ = bi_workdir
  config = _config(interval=0)
  models = steps.build_models(config)
  fresh, _ = bi_states  # The bidirectional run's init: its groups as without a2v.
  params = {k: fresh.params[k] for k in ('encoders', 'denoiser')}
  batch = pipeline.select(next(iter(pipeline.train_loader(config))), ('frames', 'waveform'))
  batch = jax.tree.map(jnp.asarray, batch)
  # The trainer's key for step 1: fold_in(key(seed + 1), step index 0).
  rng = jax.random.fold_in(jax.random.key(config.seed + 1), 0)

  def todays_loss(params, batch, rng):
    mel = steps.log_mel(batch, config)
    out = models.encoders.apply({'params': params['encoders']}, batch['frames'], mel)
    msa, _ = contrastive.msa_loss(out['audio'], out['video'], out['temperature'],
                                  scale_weights=None,
                                  adaptive_weights=config.loss.adaptive_weights,
                                  adaptive_temperature=config.loss.adaptive_temperature,
                                  adaptive_stop_gradient=config.loss.adaptive_stop_gradient)
    msd_value, _ = msd_lib.msd_loss(params['denoiser'], out['video'],
                                    steps.normalise_mel(mel, config), rng, models=models,
                                    config=config)
    return config.loss.msa_weight * msa + config.loss.msd_weight * msd_value

  # One program (one compile) computes both.
  loss, expected = jax.jit(lambda *args: (
      steps.loss_fn(*args, models=models, config=config, phase=phases.JOINT)[0],
      todays_loss(*args)))(params, batch, rng)
  assert float(loss) == float(expected)
  rows = metrics_io.read_jsonl(os.path.join(workdir, 'metrics.jsonl'))
  step1 = next(r for r in rows if r['step'] == 1 and 'train/loss' in r)
  assert 'train/loss/a2v_loss' not in step1
  np.testing.assert_allclose(step1['train/loss'], float(loss), rtol=1e-6)


def test_a2v_denoiser_output_shapes():
  for config in (tiny_config('msa_msd', **{'train.bidirectional_interval': 1}),
                 msa_msd.get_config('runlocal'), msd.get_config('runlocal')):
    config.train.bidirectional_interval = 1
    config_validation.validate(config)
    net = steps.build_models(config).video_denoiser
    size, t, b = config.a2v.image_size, config.data.num_frames, 3
    x = jnp.zeros((b, t, size, size, 3))
    audio_scales = [jnp.zeros((b, t // p, 1, config.model.embed_dim))
                    for p in config.model.scale_pools]
    params = jax.eval_shape(net.init, jax.random.key(0), x, jnp.zeros((b,), jnp.int32),
                            audio_scales)
    for scales in (audio_scales, None):  # Conditional and unconditional (guidance).
      out = jax.eval_shape(functools.partial(net.apply, drop_condition=jnp.zeros((b,), bool)),
                           params, x, jnp.zeros((b,), jnp.int32), scales)
      chex.assert_shape(out, (b, t, size, size, 3))
      assert out.dtype == jnp.float32


def test_the_a2v_denoiser_trains_on_every_kth_step_only(bi_workdir, bi_states):
  workdir, results = bi_workdir
  config = config_io.load_config(workdir)
  assert [str(steps.train_phase(config, s)) for s in (1, 2, 3, 4)] == [
      'joint', 'joint+a2v', 'joint', 'joint+a2v']
  assert [steps.a2v_trained(config, s) for s in (1, 2)] == [False, True]
  fresh, saved = bi_states
  after1, after2 = saved[1], saved[2]
  # Updates taken by each group's optimizer (Adam's count): the a2v denoiser's only on step 2.
  assert [_updates(s.opt_state['video_denoiser']) for s in (after1, after2)] == [0, 1]
  assert [_updates(s.opt_state['encoders']) for s in (after1, after2)] == [1, 2]
  assert _equal(fresh.params['video_denoiser'], after1.params['video_denoiser'])
  # (The first update of any group has a learning rate of 0 in the warmup.)
  assert not _equal(after1.params['video_denoiser'], after2.params['video_denoiser'])
  assert not _equal(after1.params['denoiser'], after2.params['denoiser'])
  rows = [r for r in metrics_io.read_jsonl(os.path.join(workdir, 'metrics.jsonl'))
          if 'train/loss' in r]
  assert [('train/loss/a2v_loss' in r) for r in rows] == [False, True]
  # Two-stage configs: the first a2v step is the first multiple of k after the encoder stage.
  frozen = tiny_config('msa', **{'train.bidirectional_interval': 2})  # encoder_steps = 2.
  assert [steps.train_phase(frozen, s) for s in (2, 3, 4)] == [
      phases.CONTRASTIVE, phases.GENERATOR, phases.GENERATOR.with_a2v()]
  assert [steps.a2v_trained(frozen, s) for s in (3, 4)] == [False, True]
  # The evaluation scored a2v generation, each score beside its control.
  with open(os.path.join(workdir, 'results.json')) as f:
    assert json.load(f) == results
  assert results['gen_a2v/num_clips'] == 4
  for key in ('mse', 'psnr', 'mse_shuffled', 'psnr_shuffled'):
    assert np.isfinite(results[f'gen_a2v/{key}']), key
  for key in ('onset_hit@125ms', 'onset_hit@125ms_shuffled', 'onset_hit@125ms_real'):
    assert 0 <= results[f'gen_a2v/{key}'] <= 100, key


def test_a2v_generate_cli_writes_viewable_files(bi_workdir, tmp_path):
  workdir, _ = bi_workdir
  config = config_io.load_config(workdir)
  r = subprocess.run([sys.executable, '-m', 'gmscavp_jax.generate', '--direction=a2v',
                      f'--workdir={workdir}', '--test_index=1', f'--output_dir={tmp_path}'],
                     cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-3000:]
  assert sorted(os.listdir(tmp_path)) == ['test00001_frames.mp4', 'test00001_strip.png']
  t = config.data.num_frames
  # 8x8 frames upscaled 16x, generated | white bar | real.
  frames = media.read_video_clip(str(tmp_path / 'test00001_frames.mp4'), num_frames=t,
                                 fps=config.data.fps, image_size=128)
  assert frames.shape == (t, 128, 128, 3)
  with av.open(str(tmp_path / 'test00001_frames.mp4')) as container:
    video = container.streams.video[0]
    assert (video.width, video.height) == (2 * 128 + 4, 128)
    assert len(container.streams.audio) == 1
  assert os.path.getsize(tmp_path / 'test00001_strip.png') > 0

  # --audio: a WAV alone (no real frames to compare with).
  clip = pipeline.make_source(config, 'test')[2]
  wav = str(tmp_path / 'sound.wav')
  media_writing.write_wav(wav, clip['waveform'], config.audio.sample_rate)
  out = audio_to_video.generate(workdir, str(tmp_path / 'wav'), audio=wav)
  assert 'psnr' not in out and os.path.exists(out['png']) and os.path.exists(out['mp4'])

  # A run without bidirectional training: one clear error, before reading any media.
  plain = tmp_path / 'plain'
  plain.mkdir()
  with open(os.path.join(workdir, 'config.json')) as f:
    saved = json.load(f)
  saved['train']['bidirectional_interval'] = 0
  (plain / 'config.json').write_text(json.dumps(saved))
  with pytest.raises(errors.ConfigError, match='bidirectional_interval=0'):
    audio_to_video.generate(str(plain), str(tmp_path / 'none'), test_index=0)


@pytest.mark.parametrize('field, value, training', [
    ('train.bidirectional_interval', -1, 'joint'),
    ('train.bidirectional_interval', 2, 'none'),
    ('a2v.image_size', 12, 'joint'),
    ('a2v.stem_patch', 3, 'joint'),
])
def test_bad_bidirectional_fields_are_named(field, value, training):
  config = tiny_config('msa_msd', **{'train.bidirectional_interval': 2,
                                     'diffusion.training': training})
  group, name = field.split('.')
  config[group][name] = value
  with pytest.raises(errors.ConfigError, match=field.replace('.', r'\.')):
    config_validation.validate(config)
