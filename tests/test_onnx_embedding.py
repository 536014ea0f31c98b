"""evaluate --fad_embedding: FAD with a user's ONNX audio embedding network."""

import numpy as np
import pytest

from gmscavp_jax.evaluators import metrics
from gmscavp_jax.evaluators import onnx_embedding
from gmscavp_jax.infra import errors
from tests import onnx_models

RATE = 8000


def _model(tmp_path, window=800, dim=6):
  weights = np.random.default_rng(0).normal(size=(window, dim))
  return onnx_models.linear_projection(str(tmp_path / 'projection.onnx'), weights), weights


def test_fad_through_the_onnx_model_equals_numpy(tmp_path):
  path, weights = _model(tmp_path)
  embed = onnx_embedding.OnnxEmbedding(path, RATE, window_seconds=0.1)
  rng = np.random.default_rng(1)
  generated, reference = rng.normal(size=(12, 2 * RATE)), 0.5 * rng.normal(size=(12, 2 * RATE))
  # The same projection in numpy: every 0.1 s window of every clip, then FAD over windows.
  by_hand = lambda w: w.reshape(-1, 800) @ weights
  expected = metrics.fad(by_hand(generated), by_hand(reference))
  np.testing.assert_allclose(metrics.fad(embed(generated, RATE), embed(reference, RATE)),
                             expected, rtol=1e-4)
  assert embed(generated, RATE).shape == (12 * 20, 6)
  assert embed.identity.startswith('projection.onnx sha256:')


def test_windows_resample_hop_and_pad(tmp_path):
  path, _ = _model(tmp_path)
  wave = np.random.default_rng(2).normal(size=(3, 2 * RATE))
  # At twice the rate, a 0.05 s window is 800 samples; a hop of half a window doubles them.
  embed = onnx_embedding.OnnxEmbedding(path, 2 * RATE, 0.05, hop_seconds=0.025)
  windows = embed.windows(wave, RATE)
  assert windows.shape == (3 * 79, 800) and windows.dtype == np.float32
  # A clip shorter than one window is zero-padded to it.
  short = onnx_embedding.OnnxEmbedding(path, RATE, 0.1).windows(wave[:, :500], RATE)
  np.testing.assert_array_equal(short[:, 500:], 0.0)
  assert short.shape == (3, 800)


def test_bad_model_settings_are_named(tmp_path):
  with pytest.raises(FileNotFoundError, match='--fad_embedding=.*no such ONNX file'):
    onnx_embedding.OnnxEmbedding(str(tmp_path / 'missing.onnx'), RATE, 0.96)
  path, _ = _model(tmp_path)
  with pytest.raises(errors.ConfigError, match='--fad_window_seconds=0'):
    onnx_embedding.OnnxEmbedding(path, RATE, 0)
