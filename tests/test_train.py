"""The real trainer end to end on tiny configs: workdir files, resume, generation, CLIs."""

import functools
import json
import os
import subprocess
import sys

import av
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.io.wavfile

from gmscavp_jax.core import config_io
from gmscavp_jax.core import state as state_lib
from gmscavp_jax.core import steps
from gmscavp_jax.data import builders
from gmscavp_jax.data import media
from gmscavp_jax.data import media_writing
from gmscavp_jax.data import pipeline
from gmscavp_jax.data.prepare import layouts
from gmscavp_jax.data.prepare import preparation
from gmscavp_jax.data.prepare import render
from gmscavp_jax.evaluators import retrieval
from gmscavp_jax.inference import retrieval_queries
from gmscavp_jax.inference import video_to_audio
from gmscavp_jax.infra import checkpointing
from gmscavp_jax.infra import metrics_io
from gmscavp_jax.infra import sharding
from gmscavp_jax import train
from tests.conftest import ROOT, copy_workdir, tiny_config


# One two-stage (msa) and one joint (msa_msd) config run end to end; cavp and msd differ from
# them only in config values (fewer scales), checked abstractly below at no compile cost.
# Both runs are conftest's, trained once per test run for every file that uses them.
@pytest.mark.parametrize('name', ['msa', 'msa_msd'])
def test_train_and_evaluate_fills_the_workdir(name, request):
  workdir, results = request.getfixturevalue(f'{name}_workdir')
  for f in ('config.json', 'metrics.jsonl', 'results.json', 'test_embeddings.npz',
            'plots/similarity.png', 'plots/loss.png', 'plots/generated.png'):
    assert os.path.exists(os.path.join(workdir, f)), f
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints')))[-1] == '4'
  assert os.listdir(os.path.join(workdir, 'tensorboard'))
  rows = metrics_io.read_jsonl(os.path.join(workdir, 'metrics.jsonl'))
  train_rows = [r for r in rows if 'train/loss' in r]
  assert [r['step'] for r in train_rows] == [1, 2, 3, 4]
  assert all(np.isfinite(r['train/loss']) for r in train_rows)
  with open(os.path.join(workdir, 'results.json')) as f:
    saved = json.load(f)
  assert saved == results
  for key in ('retrieval/v2a_R@1', 'retrieval/a2v_R@5', 'retrieval/v2a_R@10',
              'retrieval/chance_R@1', 'retrieval/median_rank_v2a', 'retrieval/median_rank_a2v'):
    assert key in saved, key
  assert saved['retrieval/num_clips'] == 16
  assert saved['retrieval/chance_R@1'] == pytest.approx(100 / 16)
  # The oracle that knows each test clip's sounding and visible classes, and the label alone
  # (evaluators/retrieval.py): above chance, the finer descriptor at least as high.
  assert 100 / 16 < saved['retrieval/class_ceiling_R@1'] <= saved['retrieval/ceiling_R@1'] <= 100
  assert saved['retrieval/ceiling_R@5'] >= saved['retrieval/ceiling_R@1']
  # Read from the dataset source for the same clips, without the model, the same numbers.
  ceilings = retrieval.test_split_ceiling(tiny_config(name))
  assert ceilings == {k: v for k, v in saved.items() if 'ceiling' in k} and len(ceilings) == 6
  assert 0 <= saved['retrieval/v2a_R@1'] <= 100
  # Every Table 3 config has trained its denoiser by the last step, and scores generation.
  for key in ('gen/onset_f1@100ms', 'gen/onset_f1@50ms', 'gen/onset_precision@100ms',
              'gen/onset_recall@50ms', 'gen/onset_f1@100ms_shuffled', 'gen/onset_f1@100ms_real',
              'gen/onset_hit@100ms', 'gen/onset_hit@50ms', 'gen/onset_hit@100ms_shuffled',
              'gen/onset_hit@100ms_real'):
    assert 0 <= saved[key] <= 100, key
  assert saved['gen/num_clips'] == 8
  joint = name in ('msd', 'msa_msd')
  # Joint configs train the denoiser from step 1; two-stage ones only after encoder_steps.
  msd_steps = [r['step'] for r in train_rows if 'train/loss/msd_loss' in r]
  assert msd_steps == ([1, 2, 3, 4] if joint else [3, 4])
  assert [('train/loss/msa' in r) for r in train_rows] == (
      [True] * 4 if joint else [True, True, False, False])
  # The saved config is the resolved one and loads back.
  assert config_io.load_config(workdir).model.scale_pools == tiny_config(name).model.scale_pools


def test_rendered_mp4s_prepare_train_and_retrieve(msa_workdir, tmp_path):
  """The real-data path end to end: mp4 folder + CSV -> prepare -> train -> evaluate."""
  del msa_workdir  # Runs after it, so the same tiny programs come from the compile cache.
  config = tiny_config('msa')
  render.render_vggsound_layout(config, tmp_path / 'vgg', num_train=32, num_test=16,
                                progress=False)
  dataset = layouts.load('vggsound', str(tmp_path / 'vgg' / 'VIDEOS'),
                         str(tmp_path / 'vgg' / 'vggsound.csv'))
  geometry = builders.clips_config(config.data.num_frames, config.data.fps,
                                   config.data.image_size, config.audio.sample_rate)
  report = preparation.prepare(dataset, data_dir=str(tmp_path / 'data'), name='vggsound',
                               config=geometry, workers=0, progress=False)
  assert report['ok'] == 48 and report['bad'] == 0
  config = tiny_config('msa', **{'data.name': 'vggsound', 'data.data_dir': str(tmp_path / 'data'),
                                 'data.num_classes': len(dataset.classes)})
  workdir = str(tmp_path / 'work')
  results = train.train_and_evaluate(config, workdir)
  assert config_io.load_config(workdir).data.name == 'vggsound'
  assert results['retrieval/num_clips'] == 16 and 0 <= results['retrieval/v2a_R@1'] <= 100
  # A prepared set says nothing of the classes on screen: its ceiling is the class-only one.
  assert results['retrieval/ceiling_R@1'] == results['retrieval/class_ceiling_R@1']
  assert retrieval.test_split_ceiling(config)['retrieval/ceiling_R@5'] == results[
      'retrieval/ceiling_R@5']
  # No true onset times in real clips: the real audio's detected onsets are the reference.
  assert 'gen/onset_hit@100ms_real' not in results
  assert 0 <= results['gen/onset_hit@100ms'] <= 100
  cached = retrieval_queries.test_embeddings(workdir)
  assert cached['video'].shape[0] == 16


@pytest.mark.parametrize('name', ['cavp', 'msd'])
def test_every_phase_of_the_other_table3_configs_traces(name):
  config = tiny_config(name)
  models, txs = steps.build_models(config), steps.make_optimizers(config)
  state = jax.eval_shape(functools.partial(steps.init_state, config, models, txs),
                         jax.random.key(0))
  frames, _ = steps.dummy_inputs(config, batch_size=4)
  batch = {'frames': frames, 'waveform': jnp.zeros((4, 8000))}
  phases = {steps.phase_at(config, s) for s in range(1, config.train.num_steps + 1)}
  assert {str(p) for p in phases} == (
      {'joint'} if name == 'msd' else {'contrastive', 'generator'})
  for phase in phases:
    new_state, metrics = jax.eval_shape(functools.partial(
        steps.train_step, models=models, txs=txs, config=config, phase=phase),
        state, batch, jax.random.key(1))
    assert jax.tree.structure(new_state) == jax.tree.structure(state)
    assert metrics['train/loss'].shape == ()


def test_params_only_restore_equals_the_full_restore(msa_workdir):
  """The inference restore reads the params alone, bit for bit those of the whole state."""
  workdir, _ = msa_workdir
  config = config_io.load_config(workdir)
  mesh = sharding.mesh_from_config(config)
  models, params, step = state_lib.restore_params(workdir, config, mesh)
  assert step == 4 and models.video_denoiser is None
  _, _, fresh = state_lib.build(config, mesh)
  ckpt = checkpointing.Checkpointer(workdir, keep=config.train.keep_checkpoints)
  full, full_step = ckpt.restore_latest(checkpointing.abstract_like(fresh))
  ckpt.close()
  assert full_step == step
  assert jax.tree.structure(params) == jax.tree.structure(full.params)
  for got, want in zip(jax.tree.leaves(params), jax.tree.leaves(full.params)):
    assert got.dtype == want.dtype and got.sharding == want.sharding
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_retrieve_from_cache_and_from_checkpoint(msa_workdir, tmp_path):
  workdir = copy_workdir(msa_workdir[0], tmp_path / 'msa')  # Its cache is moved away below.
  cached = retrieval_queries.test_embeddings(workdir)
  assert int(cached['step']) == 4
  os.rename(os.path.join(workdir, 'test_embeddings.npz'), str(tmp_path / 'saved.npz'))
  try:
    recomputed = retrieval_queries.test_embeddings(workdir)  # From the checkpoint.
  finally:
    os.rename(str(tmp_path / 'saved.npz'), os.path.join(workdir, 'test_embeddings.npz'))
  np.testing.assert_allclose(recomputed['video'], cached['video'], atol=1e-5)
  np.testing.assert_allclose(recomputed['audio'], cached['audio'], atol=1e-5)
  out = retrieval.answer_query(cached, test_index=3, top_k=5, direction='both')
  for name in ('v2a', 'a2v'):
    scores = [hit['score'] for hit in out[name]]
    assert len(scores) == 5 and scores == sorted(scores, reverse=True)
  with pytest.raises(ValueError, match='test_index'):
    retrieval.answer_query(cached, test_index=16, top_k=5, direction='both')
  # A query from outside the split (the demo's uploads): test clip 3's own frames and audio,
  # embedded anew by the restored encoders, rank the split as its cached embeddings do.
  record = pipeline.make_source(config_io.load_config(workdir), 'test')[3]
  retriever = retrieval_queries.Retriever(workdir)
  fresh = retriever.clip(5, frames=record['frames'], waveform=record['waveform'])
  for name in ('v2a', 'a2v'):
    assert [h['clip'] for h in fresh[name]] == [h['clip'] for h in out[name]]
    np.testing.assert_allclose([h['score'] for h in fresh[name]],
                               [h['score'] for h in out[name]], atol=1e-4)
  assert set(retriever.clip(5, frames=record['frames'])) == {'step', 'v2a'}


def test_retrieve_cli(msa_workdir, tmp_path):
  workdir, _ = msa_workdir
  out_json = str(tmp_path / 'answer.json')
  r = subprocess.run([sys.executable, '-m', 'gmscavp_jax.retrieve', f'--workdir={workdir}',
                      '--test_index=2', '--top_k=3', f'--output_json={out_json}'], cwd=ROOT,
                     capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-2000:]
  assert 'query: test clip 2' in r.stdout
  with open(out_json) as f:
    answer = json.load(f)
  assert len(answer['v2a']) == 3 and len(answer['a2v']) == 3
  # A video file as the query: its frames rank the audios, its sound the videos.
  record = pipeline.make_source(config_io.load_config(workdir), 'test')[2]
  video = str(tmp_path / 'query.mp4')
  media_writing.write_video(video, record['frames'], config_io.load_config(workdir).data.fps,
                            record['waveform'], config_io.load_config(workdir).audio.sample_rate)
  r = subprocess.run([sys.executable, '-m', 'gmscavp_jax.retrieve', f'--workdir={workdir}',
                      f'--video={video}', '--top_k=3', f'--output_json={out_json}'], cwd=ROOT,
                     capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-2000:]
  assert f'query: {video} from 0 s, checkpoint 4' in r.stdout
  with open(out_json) as f:
    answer = json.load(f)
  for name in ('v2a', 'a2v'):
    scores = [hit['score'] for hit in answer[name]]
    assert len(scores) == 3 and scores == sorted(scores, reverse=True)
  r = subprocess.run([sys.executable, '-m', 'gmscavp_jax.retrieve',
                      f'--workdir={tmp_path / "missing"}', '--test_index=0'], cwd=ROOT,
                     capture_output=True, text=True, timeout=300)
  assert r.returncode == 1 and 'config.json not found' in r.stderr
  assert 'Traceback' not in r.stderr


def test_generate_for_a_test_clip(msa_workdir, tmp_path):
  workdir, _ = msa_workdir
  out = video_to_audio.generate(workdir, str(tmp_path), test_index=1, num_steps=3)
  config = config_io.load_config(workdir)
  num_samples = round(config.data.num_frames / config.data.fps * config.audio.sample_rate)
  rate, wave = scipy.io.wavfile.read(out['wav'])
  assert rate == config.audio.sample_rate and len(wave) == num_samples
  assert os.path.getsize(out['png']) > 0
  with av.open(out['mp4']) as container:
    assert len(container.streams.video) == 1 and len(container.streams.audio) == 1
  frames = media.read_video_clip(out['mp4'], num_frames=config.data.num_frames,
                                 fps=config.data.fps, image_size=config.data.image_size)
  assert frames.shape == (config.data.num_frames, 32, 32, 3)
  assert 0 <= out['onset_hit@100ms'] <= 100 and out['true_onsets']
