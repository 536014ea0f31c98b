"""Dataset mixtures (data.mixture): the spec, grain's mixing by weight through the pipeline's
sampler, and mixtures of synthetic sources through the real train loader."""

import collections

import numpy as np
import pytest

from gmscavp_jax.core import config_validation
from gmscavp_jax.data import mixture
from gmscavp_jax.data import pipeline
from gmscavp_jax.evaluators import classifier_training
from gmscavp_jax.infra import errors
from tests.conftest import tiny_config


def test_parse_and_spec_round_trip():
  spec = 'synthetic:0.7, vggsound[data_dir=/data/tfds,clips=500]:0.2,synthetic[seed=1]'
  entries = mixture.parse(spec)
  assert entries == (mixture.Entry('synthetic', 0.7),
                     mixture.Entry('vggsound', 0.2, data_dir='/data/tfds', clips=500),
                     mixture.Entry('synthetic', 1.0, seed=1))
  assert mixture.parse(','.join(e.spec() for e in entries)) == entries
  assert mixture.parse('') == ()
  np.testing.assert_allclose(mixture.normalised([0.7, 0.2, 1.0]), [0.7 / 1.9, 0.2 / 1.9,
                                                                   1 / 1.9])


@pytest.mark.parametrize('spec, message', [
    ('Synthetic:1', 'lower_snake_case'),
    ('synthetic:-1', 'positive number'),
    ('synthetic[clips=0]', 'clips=0'),
    ('synthetic[data_dir=/x]', 'no data_dir'),
    ('vggsound[seed=2]', 'only applies to synthetic'),
    ('synthetic[seed=1,seed=2]', 'given twice'),
    ('synthetic:1,,synthetic:1', 'entry'),
])
def test_parse_errors(spec, message):
  with pytest.raises(ValueError, match=message):
    mixture.parse(spec)


def _records(n: int, tag: int) -> list:
  """A cheap random-access source: n records with the mixture's fields (and an extra one)."""
  return [dict(frames=np.full(2, tag, np.uint8), waveform=np.zeros(3, np.float32),
               index=np.int32(i), extra=tag) for i in range(n)]


def test_empirical_shares_through_the_global_batch_sampler():
  # Sizes unlike the weights: a 7-record source takes 10% and repeats; 1000 records take 30%.
  shares = {0: 0.6, 1: 0.3, 2: 0.1}
  source = mixture.MixtureSource([_records(50, 0), _records(1000, 1), _records(7, 2)],
                                 [6.0, 3.0, 1.0], ['a', 'b', 'c'])
  sampler = pipeline.GlobalBatchSampler(len(source), 64, 1, num_workers=2, shuffle=True,
                                        num_epochs=None, seed=3)
  counts = collections.Counter()
  for i in range(6400):  # 100 global batches of the shuffled, repeating stream.
    record = source[sampler[i].record_key]
    assert set(record) == {'frames', 'waveform', 'index', 'source'}  # `extra` dropped.
    assert int(record['frames'][0]) == int(record['source'])
    counts[int(record['source'])] += 1
  for k, share in shares.items():
    assert abs(counts[k] / 6400 - share) < 0.02, (k, counts)
  # One pass covers the scarcest source (for its share) whole, and the others too.
  seen = collections.defaultdict(set)
  for i in range(len(source)):
    record = source[i]
    seen[int(record['source'])].add(int(record['index']))
  assert [len(seen[k]) for k in range(3)] == [50, 1000, 7]
  assert 'a (50 records, share 0.6)' in repr(source)


def test_synthetic_mixture_through_the_train_loader():
  config = tiny_config('msa', **{'data.mixture': 'synthetic[clips=16]:0.5,'
                                                 'synthetic[seed=1,clips=64]:0.5'})
  config_validation.validate(config)
  source = pipeline.make_source(config, 'train')
  assert isinstance(source, mixture.MixtureSource) and source.sizes == (16, 64)
  batch = next(iter(pipeline.train_loader(config)))
  assert batch['frames'].shape == (8, 8, 32, 32, 3) and batch['waveform'].shape[0] == 8
  assert set(np.unique(batch['source'])) <= {0, 1}
  # Each record is its own world's clip at its index (seed 1's world differs from seed 0's).
  worlds = [pipeline.make_source(tiny_config('msa', **{'data.seed': seed}), 'train')
            for seed in (0, 1)]
  for i in range(8):
    record = source[i]
    np.testing.assert_array_equal(
        record['waveform'], worlds[int(record['source'])][int(record['index'])]['waveform'])
  assert not np.array_equal(worlds[0][0]['waveform'], worlds[1][0]['waveform'])
  # The evaluators stay data.name's own: the mixture changes neither their data nor their id.
  assert (classifier_training.identity(config) ==
          classifier_training.identity(tiny_config('msa')))
  assert not classifier_training.loader_config(config, 8, 0).data.mixture


def test_sources_that_do_not_batch_are_a_config_error(monkeypatch):
  config = tiny_config('msa', **{'data.mixture': 'synthetic:1,synthetic[seed=1]:1'})
  real = pipeline.make_source

  def fake(cfg, split):  # The second world as if it had another frame size.
    if cfg.data.seed == 1:
      cfg.data.image_size = 16
    return real(cfg, split)

  monkeypatch.setattr(pipeline, 'make_source', fake)
  with pytest.raises(errors.ConfigError,
                     match=r"mixture entry 1 \('synthetic\[seed=1\]:1'\).*same geometry"):
    pipeline.mixture_source(config)


def test_prepared_entry_errors_name_the_entry(tmp_path):
  config = tiny_config('msa', **{'data.mixture': f'synthetic:1,vggsound[data_dir={tmp_path}]:1'})
  with pytest.raises(errors.ConfigError,
                     match=r"mixture entry 1 \('vggsound\[data_dir=.*\]:1'\): .*vggsound"):
    pipeline.make_source(config, 'train')
