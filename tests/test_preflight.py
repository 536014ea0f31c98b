"""Found before any work: the fields a prepared set decides are read from it, every count is
checked against its splits before anything is written or compiled, and a test split that
eval.batch_size does not divide is evaluated whole (core/preflight.py, pipeline.eval_loader)."""

import os

import jax.numpy as jnp
import numpy as np
import pytest

from gmscavp_jax import train
from gmscavp_jax.core import config_io
from gmscavp_jax.core import preflight
from gmscavp_jax.data import pipeline
from gmscavp_jax.evaluators import retrieval
from gmscavp_jax.infra import errors
from gmscavp_jax.infra import sharding
from tests.conftest import tiny_config
from tests.test_builders import _config, prepared  # pylint: disable=unused-import


def _left(config):
  """`config` with data.num_classes and eval.num_test_clips back at the config file's values
  (what a user who does not pass them has)."""
  config.data.num_classes = config.eval.synthetic_defaults.num_classes
  config.eval.num_test_clips = config.eval.synthetic_defaults.num_test_clips
  return config


@pytest.mark.parametrize('leave', [_left, lambda c: c.update_from_flattened_dict(
    {'data.num_classes': 0, 'eval.num_test_clips': 0}) or c], ids=['defaults', 'zeros'])
def test_fields_left_to_the_set_are_read_from_its_metadata(prepared, leave):
  config = leave(_config(prepared))
  assert (config.data.num_classes, config.eval.num_test_clips) != (2, 3)
  resolved = preflight.check(config, num_devices=1)
  assert resolved == {'data.num_classes': 2, 'eval.num_test_clips': 3}  # Its classes a, b.
  assert (config.data.num_classes, config.eval.num_test_clips) == (2, 3)
  # eval.batch_size=2 does not divide 3 test clips: the last batch is padded, not refused.
  assert config.eval.batch_size == 2
  batches = list(pipeline.eval_loader(config))
  assert [b['index'].tolist() for b in batches] == [[0, 1], [2, 2]]
  assert [b['valid'].tolist() for b in batches] == [[True, True], [True, False]]


def test_resolved_values_are_what_the_workdir_saves(prepared, tmp_path):
  config = _left(_config(prepared))
  config.lock()  # As main's --config flag gives it.
  train._open_workdir(config, str(tmp_path))  # pylint: disable=protected-access
  saved = config_io.load_config(str(tmp_path))
  assert (saved.data.num_classes, saved.eval.num_test_clips) == (2, 3)


def test_given_values_are_kept_and_checked(prepared):
  config = _config(prepared, **{'eval.num_test_clips': 2})
  assert preflight.check(config, num_devices=1) == {} and config.eval.num_test_clips == 2
  with pytest.raises(errors.ConfigError, match=r'config.data.num_classes=3: expected 2, the '
                     r'classes of the prepared dataset .*tiny'):
    preflight.check(_config(prepared, **{'data.num_classes': 3}))
  with pytest.raises(errors.ConfigError, match=r"config.train.batch_size=8: expected at most 6, "
                     r"the clips of split 'train'"):
    preflight.check(_config(prepared, **{'train.batch_size': 8}))
  # The default itself, kept: its record set to 0 says it was given.
  config = _left(_config(prepared))
  config.eval.synthetic_defaults.num_test_clips = 0
  with pytest.raises(errors.ConfigError, match='config.eval.num_test_clips=512: expected at '
                     'most 3'):
    preflight.check(config)


def test_too_many_test_clips_stop_the_trainer_before_step_one(prepared, tmp_path, monkeypatch):
  """The issue's run: num_test_clips beyond the split failed after 400 steps; now before
  any model is built, with nothing in the workdir."""
  monkeypatch.setattr(train.state_lib, 'build',
                      lambda *a, **k: pytest.fail('built a model for a config that cannot run'))
  workdir = tmp_path / 'work'
  config = _config(prepared, **{'eval.num_test_clips': 4})
  with pytest.raises(errors.ConfigError) as e:
    train.train_and_evaluate(config, str(workdir))
  assert str(e.value).startswith('config.eval.num_test_clips=4: expected at most 3, the clips '
                                 "of split 'test' of ")
  assert not workdir.exists()  # No config.json, checkpoint or metrics.jsonl.


def test_a_count_that_no_longer_fits_the_resolved_split_says_where_it_came_from(prepared):
  config = _config(prepared, **{'eval.num_test_clips': 0, 'eval.num_generate_clips': 4})
  with pytest.raises(errors.ConfigError, match=r'config.eval.num_generate_clips=4: expected in '
                     r'\[0, eval.num_test_clips=3\] \(eval.num_test_clips=3 read from the '
                     r'prepared set\)'):
    preflight.check(config)


@pytest.mark.parametrize('field', ['data.num_classes', 'eval.num_test_clips'])
def test_the_sentinel_needs_a_prepared_set(field):
  with pytest.raises(errors.ConfigError, match=rf'config.{field}=0: expected a positive '
                     r"integer \(0, read from the set, is for a prepared data.name"):
    preflight.check(tiny_config('msa', **{field: 0}))
  config = tiny_config('msa')
  assert preflight.check(config) == {} and config.eval.num_test_clips == 16  # Unchanged.


def _fake_embed(params, batch):
  """Per-clip stand-ins for the encoders: (B,16) of each clip's own pixels and samples."""
  del params
  frames = batch['frames'].reshape(len(batch['frames']), -1).astype(jnp.float32)
  video, audio = frames[:, ::97][:, :16] / 255.0, batch['waveform'][:, ::41][:, :16]
  return video, audio


def test_retrieval_over_a_padded_last_batch_equals_whole_batches():
  """N = 6 test clips in batches of 2 and 3 (dividing), 4 and 8 (padded): the same clips,
  embeddings and every retrieval number (ranks, intervals, ceilings)."""
  runs = {}
  for batch_size in (2, 3, 4, 8):
    config = tiny_config('msa', **{'eval.num_test_clips': 6, 'eval.batch_size': batch_size})
    evaluator = retrieval.RetrievalEvaluator(config, sharding.make_mesh(), models=None)
    evaluator._embed = _fake_embed  # pylint: disable=protected-access
    runs[batch_size] = evaluator.run(params=None)
  results, emb = runs[2]
  assert results['retrieval/num_clips'] == 6
  np.testing.assert_array_equal(emb['index'], np.arange(6))
  assert 0 < results['retrieval/v2a_R@1'] < 100  # Not a degenerate case.
  for batch_size, (other, other_emb) in runs.items():
    assert other == results, batch_size
    assert sorted(other_emb) == sorted(emb)
    for key in emb:
      np.testing.assert_array_equal(other_emb[key], emb[key], err_msg=f'{batch_size} {key}')
