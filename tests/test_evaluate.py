"""The evaluate command: evaluator networks, the metric suite, results.json and results.md."""

import json
import os
import re
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from gmscavp_jax.core import config_io
from gmscavp_jax.core import sampling
from gmscavp_jax.core import state as state_lib
from gmscavp_jax.data import audio
from gmscavp_jax.data import pipeline
from gmscavp_jax.evaluators import checkpoint_evaluation
from gmscavp_jax.evaluators import classifier_training
from gmscavp_jax.evaluators import classifiers
from gmscavp_jax.evaluators import generation
from gmscavp_jax.evaluators import guide_training
from gmscavp_jax.evaluators import suite
from gmscavp_jax.evaluators import vocoder_training
from gmscavp_jax.infra import errors
from tests import onnx_models
from tests.conftest import ROOT
from tests.conftest import copy_workdir
from tests.conftest import tiny_config

REQUIRED = ('gen/kld', 'gen/fad', 'gen/align_acc', 'gen/onset_f1@50ms', 'gen/onset_f1@100ms',
            'gen/onset_precision@100ms', 'gen/onset_recall@100ms', 'gen/onset_hit@100ms',
            'ref/gt/onset_f1@100ms', 'ref/shuffled/onset_f1@50ms', 'ref/vocoded/kld',
            'ref/vocoded/fad', 'ref/vocoded/align_acc', 'ref/vocoded/onset_f1@100ms',
            'retrieval/v2a_R@1', 'retrieval/a2v_R@5', 'retrieval/chance_R@1',
            'retrieval/ceiling_R@1', 'retrieval/class_ceiling_R@1', 'ref/gt/fad',
            'ref/gt/kld', 'ref/gt/align_acc', 'ref/shuffled/align_acc', 'evaluate/step',
            'eval/audio_classifier_acc', 'eval/align_classifier_acc',
            'ref/video_oracle/class_acc', 'gen/fad_inf', 'gen/fad_ci95_low',
            'gen/onset_f1@100ms_ci95_high', 'retrieval/v2a_R@1_ci95_low',
            'retrieval/a2v_R@10_ci95_high', 'gen/sync_offset_abs_s',
            'ref/gt/sync_offset_abs_s', 'ref/shifted/sync_offset_s',
            'ref/shuffled/sync_offset_abs_s', 'gen/memorised_share',
            'ref/gt/memorised_share', 'gen/train_over_test_distance')


@pytest.fixture(scope='module')
def trained(msa_msd_workdir, tmp_path_factory):
  """A tiny joint (msa_msd) workdir trained for 4 steps (a copy of conftest's: evaluating
  writes into it), and an evaluator root."""
  workdir = copy_workdir(msa_msd_workdir[0], tmp_path_factory.mktemp('trained') / 'msa_msd')
  return workdir, str(tmp_path_factory.mktemp('evaluators'))


def test_classifier_shapes():
  config = tiny_config('msa_msd')
  models = classifiers.build(config)
  params = jax.eval_shape(lambda: classifiers.init_params(config, models, jax.random.key(0)))
  frames = jax.ShapeDtypeStruct((3, 8, 32, 32, 3), np.uint8)
  mel = jax.ShapeDtypeStruct((3, 40, config.audio.n_mels), np.float32)
  out = jax.eval_shape(lambda p, m: models.audio.apply({'params': p['audio']}, m), params, mel)
  assert out['logits'].shape == (3, config.data.num_classes)
  assert out['embedding'].shape == (3, config.evaluator.embed_dim)
  logit = jax.eval_shape(lambda p, f, m: models.align.apply({'params': p['align']}, f, m),
                         params, frames, mel)
  assert logit.shape == (3,)


def test_match_by_labels_prefers_the_same_classes():
  labels = np.array([[1, 0, 1], [0, 1, 0], [0, 0, 1]], np.float32)
  candidates = np.array([[0, 1, 0], [1, 0, 1], [1, 0, 0], [0, 1, 1]], np.float32)
  # Row 2 (class 2 alone) has no exact match: the first candidate containing class 2 does.
  np.testing.assert_array_equal(suite.match_by_labels(labels, candidates), [1, 0, 1])
  assert suite.match_by_labels(np.array([[0, 0, 1]]), np.array([[1, 0, 0]]))[0] == -1


def test_evaluator_set_is_keyed_by_the_dataset(tmp_path):
  config = tiny_config('msa_msd')
  same = tiny_config('msa', **{'train.num_steps': 9})  # Another experiment, same data.
  other = tiny_config('msa_msd', **{'data.seed': 3})
  root = str(tmp_path)
  assert classifier_training.evaluator_dir(config, root) == (
      classifier_training.evaluator_dir(same, root))
  assert classifier_training.evaluator_dir(config, root) != (
      classifier_training.evaluator_dir(other, root))


def test_evaluate_writes_results_and_reuses_the_evaluators(trained, tmp_path):
  workdir, root = trained
  # A user's ONNX embedding: a fixed projection of 0.25 s windows at 4 kHz.
  onnx_model = onnx_models.linear_projection(
      str(tmp_path / 'user.onnx'), np.random.default_rng(3).normal(size=(1000, 4)))
  results = checkpoint_evaluation.evaluate_checkpoint(
      workdir, evaluator_dir=root, sampler='ddim', num_steps=3, vocoder='neural',
      fad_embedding=onnx_model, fad_sample_rate=4000, fad_window_seconds=0.25,
      retrieval_pooling='clip')
  with open(os.path.join(workdir, 'results.json')) as f:
    saved = json.load(f)
  for key in REQUIRED:
    assert key in saved and key in results, key
  assert saved['evaluate/step'] == 4 and saved['step'] == 4  # Training's keys are kept.
  # ... but not its gen/* keys that this evaluation does not write (another sampler's).
  assert 'gen/onset_hit@100ms_real' not in saved and 'gen/onset_f1@100ms_shuffled' not in saved
  assert saved['gen/kld'] >= 0 and saved['gen/fad'] > -1e-6
  assert 0 <= saved['gen/align_acc'] <= 100
  with open(os.path.join(workdir, 'results.md')) as f:
    text = f.read()
  assert '| MSA | MSD | KLD ↓ | FAD ↓ | Align Acc ↑ | R@1 | R@5 | R@10 |' in text
  assert '| ✓ | ✓ |' in text and 'ground truth' in text
  assert ('| KLD ↓ | FAD ↓ | Align Acc ↑ | onset F1@50ms ↑ | onset F1@100ms ↑ | '
          'precision@100ms | recall@100ms | class acc ↑ |') in text
  assert '| ground truth through the vocoder | ' in text
  # --vocoder=neural trained the dataset's vocoder beside the evaluators and made the
  # listening outputs and the vocoder row with it.
  assert results['evaluate/vocoder'] == 'neural'
  assert "by the dataset's neural vocoder and back" in text
  assert sorted(os.listdir(os.path.join(workdir, 'audio'))) == [
      'clip0_generated.wav', 'clip0_real.wav', 'clip1_generated.wav', 'clip1_real.wav']
  assert 'Class accuracy reachable from the video alone: ' in text
  assert '| timing-blind ceiling, either direction | ' in text
  assert 'In brackets: 95% bootstrap intervals over the generated clips' in text
  # The protocol card: how the numbers were made.
  assert 'Audio-video offset found by the alignment classifier' in text
  assert '## Protocol' in text and '| sampler | ddim |' in text
  assert saved['evaluate/embedding_dim'] == config_io.load_config(workdir).evaluator.embed_dim
  assert re.fullmatch(r'[0-9a-f]{40}(\+dirty)?|unknown', saved['evaluate/code_commit'])
  assert saved['evaluate/reference_split'] == 'test clips 4-7'
  # The run was trained with the default 'segments'; this evaluation asked for 'clip'.
  assert config_io.load_config(workdir).eval.retrieval_pooling == 'segments'
  assert '| retrieval_pooling | clip |' in text and saved['evaluate/retrieval_scale'] == -1
  assert f"{saved['gen/align_acc']:.1f} [{saved['gen/align_acc_ci95_low']:.1f}, " in text
  assert os.path.exists(os.path.join(workdir, 'plots', 'evaluate.png'))
  assert os.path.exists(os.path.join(workdir, 'plots', 'memorisation.png'))
  assert saved['gen/fad_onnx'] >= 0 and saved['ref/gt/fad_onnx'] >= 0
  assert saved['evaluate/fad_embedding'].startswith('user.onnx sha256:')
  assert saved['evaluate/fad_embedding_dim'] == 4 and '| fad_embedding_window_s | 0.25 |' in text
  assert "FAD in the user's embedding (user.onnx" in text
  assert 'Memorisation check: ' in text and saved['memorisation/num_train_clips'] == 16

  # The evaluators were trained once, into a dataset-keyed folder, and are reused.
  config = config_io.load_config(workdir)
  path = classifier_training.evaluator_dir(config, root)
  assert sorted(os.listdir(root)) == sorted(
      os.path.basename(p) for p in (path, vocoder_training.vocoder_dir(config, root)))
  stamp = os.path.getmtime(os.path.join(path, classifier_training.SUMMARY_FILE))
  assert results['evaluate/sampler'] == 'ddim' and results['evaluate/sample_steps'] == 3
  evalset, summary = classifier_training.load_or_train(config, root)
  assert os.path.getmtime(os.path.join(path, classifier_training.SUMMARY_FILE)) == stamp
  assert summary['eval/align_classifier_acc'] == results['eval/align_classifier_acc']
  mel = np.random.default_rng(0).normal(size=(3, 40, config.audio.n_mels))
  assert np.isfinite(evalset.audio(mel)['embedding']).all()

  # The vocoder row is scored exactly as the generated audio: the same log-mels in both
  # places give the same numbers.
  clips, reference = (generation.test_clips(config, 4, start=s) for s in (0, 4))
  for c in (clips, reference):
    c['log_mel'] = np.asarray(audio.log_mel_from_config(c['waveform'], config.audio))
  noisy = clips['log_mel'] + np.random.default_rng(1).normal(size=clips['log_mel'].shape)
  scores = suite.score(evalset, noisy, clips, reference, generation.frame_rate(config),
                       vocoded=noisy)
  gen_keys = [k for k in scores if k.startswith('gen/') and '_ci95_' not in k
              and 'fad_inf' not in k and 'sync_offset' not in k]  # Of suite.score alone.
  assert len(gen_keys) == 12  # kld, fad, align_acc, class_acc, 4 onset keys x 2 tolerances.
  for key in gen_keys:
    assert scores['ref/vocoded/' + key[4:]] == scores[key], key
  # The generated audio's intervals over its 4 clips: ordered, in the metric's range.
  for name in suite.INTERVAL_METRICS:
    low, high = scores[f'gen/{name}_ci95_low'], scores[f'gen/{name}_ci95_high']
    assert low <= high, name
    if name not in ('kld', 'fad'):
      assert 0 <= low <= high <= 100, name
  assert np.isfinite(scores['gen/fad_inf']) and np.isfinite(scores['gen/fad_inf_slope'])
  assert not any(k.startswith('ref/vocoded/') for k in suite.score(
      evalset, noisy, clips, reference, generation.frame_rate(config)))


def test_merging_replaces_each_family_it_writes(tmp_path):
  old = {'step': 9, 'gen/kld': 1.0, 'gen/onset_f1@100ms_real': 80.0, 'ref/gt/kld': 0.5,
         'gen_a2v/psnr': 12.0, 'retrieval/v2a_R@1': 3.0, 'evaluate/sampler': 'ddpm'}
  with open(tmp_path / 'results.json', 'w') as f:
    json.dump(old, f)
  new = {'gen/kld': 2.0, 'gen/fad': 4.0, 'evaluate/sampler': 'ddim'}
  merge = checkpoint_evaluation._merged  # pylint: disable=protected-access
  # gen/* and evaluate/* are ours alone; ref/*, retrieval/*, gen_a2v/* and step are kept.
  assert merge(str(tmp_path), new) == {
      'step': 9, 'gen/kld': 2.0, 'gen/fad': 4.0, 'evaluate/sampler': 'ddim',
      'ref/gt/kld': 0.5, 'gen_a2v/psnr': 12.0, 'retrieval/v2a_R@1': 3.0}
  assert merge(str(tmp_path / 'none'), new) == new


@pytest.mark.parametrize('module', ['gmscavp_jax.evaluate', 'gmscavp_jax.tools.source_confusion'])
def test_evaluate_cli_reports_a_missing_workdir(tmp_path, module):
  proc = subprocess.run(
      [sys.executable, '-m', module, f'--workdir={tmp_path}/nothing'],
      cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
  assert proc.returncode == 1
  assert 'config.json not found' in proc.stderr and 'Traceback' not in proc.stderr
  assert len([line for line in proc.stderr.splitlines() if line.startswith('error:')]) == 1


def test_bad_metric_clip_count_is_named(trained):
  workdir, root = trained
  with pytest.raises(Exception, match='eval.num_metric_clips'):
    checkpoint_evaluation.evaluate_checkpoint(workdir, evaluator_dir=root, num_clips=100)


def test_split_train_scores_training_clips(trained, tmp_path):
  """evaluate --split=train (the overfit check) generates for training clips, says so on its
  card and in results.md, and names a split too small for the clips asked."""
  workdir, root = trained
  out = str(tmp_path / 'train_split')
  # The sampler of test_evaluate_writes_results (ddim, 3 steps): compiled once for both.
  results = checkpoint_evaluation.evaluate_checkpoint(workdir, evaluator_dir=root, sampler='ddim',
                                                      num_steps=3, output_dir=out, split='train')
  assert results['evaluate/split'] == 'train' and np.isfinite(results['gen/class_acc'])
  with open(os.path.join(out, 'results.md')) as f:
    assert f"{int(results['gen/num_clips'])} train videos" in f.read()
  config = config_io.load_config(workdir)
  clips = generation.test_clips(config, 2, split='train')
  source = pipeline.make_source(config, 'train')
  np.testing.assert_array_equal(clips['frames'][1], source[1]['frames'])
  config.data.num_train_clips = 5
  with pytest.raises(errors.ConfigError, match="'train' split: expected at most 5"):
    generation.test_clips(config, 4, start=2, split='train')


def test_double_guidance_has_a_guide_of_its_own_that_steers_sampling(trained, tmp_path):
  workdir, fixture_root = trained
  config = config_io.load_config(workdir)
  # The module's evaluators (trained by the first test that needs them), copied into a root
  # of this test's own, where the guide is trained beside them.
  classifier_training.load_or_train(config, fixture_root)
  root = str(tmp_path / 'evaluators')
  evaluators_path = classifier_training.evaluator_dir(config, root)
  shutil.copytree(classifier_training.evaluator_dir(config, fixture_root), evaluators_path)
  out = checkpoint_evaluation.evaluate_checkpoint(
      workdir, evaluator_dir=root, sampler='ddim', num_steps=3, align_guidance=10.0,
      output_dir=str(tmp_path / 'guided'))
  assert out['evaluate/align_guidance'] == 10.0 and 0 <= out['gen/align_acc'] <= 100
  evaluators, guide_dir = sorted(os.listdir(root))
  assert guide_dir == evaluators + '-guide'  # Beside the evaluators, never the same network.
  assert evaluators == os.path.basename(evaluators_path)
  stamp = os.path.getmtime(os.path.join(root, guide_dir, guide_training.SUMMARY_FILE))
  guide = guide_training.load_or_train(config, root)  # Kept: not trained again.
  assert os.path.getmtime(os.path.join(root, guide_dir, guide_training.SUMMARY_FILE)) == stamp
  restored = state_lib.restore_workdir(workdir, config, state_lib.restore_generator)
  generator = sampling.Generator(config, restored.mesh, restored.models)
  # As many clips as the evaluation above generated for: both samplers are its programs.
  frames = generation.test_clips(config, config.eval.num_metric_clips)['frames']
  plain = generator.generate(restored.params, frames, sampler='ddim', num_steps=3)
  guided = generator.generate(restored.params, frames, sampler='ddim', num_steps=3,
                              align_guidance=10.0, guide_params=guide)
  assert np.isfinite(guided).all() and not np.allclose(plain, guided, atol=1e-3)
  with pytest.raises(ValueError, match='guide'):
    generator.generate(restored.params, frames, align_guidance=1.0)
