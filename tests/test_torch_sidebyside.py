"""The torch side-by-side's parts that need no torch (tools/torch_layout.py, sidebyside_lib):
each Flax -> torch layout rule computes what the Flax module computes under torch's
conventions (written here in NumPy), the conversion round-trips the runlocal UNet's params,
and the report's numbers and table."""

import jax
import numpy as np
import pytest

from configs import msa_msd
from gmscavp_jax.models import layers
from gmscavp_jax.models import unet_blocks
from gmscavp_jax.tools import sidebyside_lib as lib
from gmscavp_jax.tools import torch_layout
from gmscavp_jax.tools import torch_sidebyside


def _torch_conv(x_nchw, w_oihw, stride=(1, 1), padding=0):
  """torch.nn.functional.conv2d's definition in NumPy (cross-correlation, NCHW, OIHW)."""
  x = np.pad(x_nchw, [(0, 0), (0, 0), (padding, padding), (padding, padding)])
  o, _, kh, kw = w_oihw.shape
  sh, sw = stride
  oh, ow = (x.shape[2] - kh) // sh + 1, (x.shape[3] - kw) // sw + 1
  out = np.zeros((x.shape[0], o, oh, ow), np.float64)
  for i in range(kh):
    for j in range(kw):
      patch = x[:, :, i:i + sh * oh:sh, j:j + sw * ow:sw]
      out += np.einsum('bchw,oc->bohw', patch, w_oihw[:, :, i, j])
  return out


def _pixel_shuffle(x, r):
  """torch's pixel_shuffle: out[b,c,h*r+i,w*r+j] = x[b,c*r*r+i*r+j,h,w]."""
  b, c, h, w = x.shape
  return x.reshape(b, c // (r * r), r, r, h, w).transpose(0, 1, 4, 2, 5, 3).reshape(
      b, c // (r * r), h * r, w * r)


def _nchw(x):
  return np.asarray(x).transpose(0, 3, 1, 2)


@pytest.fixture(scope='module')
def runlocal():
  config = msa_msd.get_config('runlocal')
  return config, lib.randomised_params(config, 0, 80)


def test_conv_rule_matches_flax_conv():
  x = np.random.default_rng(0).standard_normal((2, 5, 6, 3), np.float32)
  module = unet_blocks.conv3x3(4, np.float32, 'c')
  params = module.init(jax.random.key(0), x)
  want = _nchw(module.apply(params, x))
  w = torch_layout.to_torch_array('conv', params['params']['kernel'])
  got = _torch_conv(_nchw(x), w, padding=1) + np.asarray(params['params']['bias'])[:, None, None]
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('patch,channels', [((2, 16), 1), ((2, 2), 3)])
def test_patch_rule_matches_patchify(patch, channels):
  x = np.random.default_rng(1).standard_normal((2, 4, 32, channels), np.float32)
  module = layers.Patchify(5, patch)
  params = module.init(jax.random.key(1), x)['params']['proj']
  want = _nchw(module.apply({'params': {'proj': params}}, x))
  w = torch_layout.to_torch_array('patch', params['kernel'], patch)
  got = _torch_conv(_nchw(x), w, stride=patch) + np.asarray(params['bias'])[:, None, None]
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_shuffle_rule_matches_upsample():
  x = np.random.default_rng(2).standard_normal((2, 3, 4, 6), np.float32)
  module = unet_blocks.Upsample(5)
  params = module.init(jax.random.key(2), x)['params']['proj']
  want = _nchw(module.apply({'params': {'proj': params}}, x))
  w = torch_layout.to_torch_array('shuffle', params['kernel'])
  bias = torch_layout.to_torch_array('shuffle', params['bias'])
  got = _pixel_shuffle(_torch_conv(_nchw(x), w) + bias[:, None, None], 2)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_runlocal_params_convert_and_round_trip(runlocal):
  config, params = runlocal
  arrays = torch_layout.flax_to_torch(params, tuple(config.unet.stem_patch))
  assert torch_layout.count(params) == 798_048 == sum(a.size for a in arrays.values())
  assert arrays['pixel_skip.weight'].shape == (128, 128)  # (n_mels, embedding) as nn.Linear.
  assert arrays['stem.proj.weight'].shape == (32, 1, 2, 16)
  assert arrays['down1.merge.proj.weight'].shape == (48, 32, 2, 2)
  assert arrays['up2_upsample.proj.weight'].shape == (192, 64, 1, 1)
  assert arrays['up0_block0.skip.weight'].shape == (32, 64, 1, 1)
  assert arrays['up1_block0.conv1.weight'].shape == (48, 96, 3, 3)
  assert arrays['mid_cross_attn.k.weight'].shape == (64, 128)
  assert arrays['tokens_2.norm.weight'].shape == (128,)
  back = torch_layout.torch_to_flax(arrays, params)
  jax.tree.map(np.testing.assert_array_equal, back, params)


def test_params_file_round_trip(runlocal, tmp_path):
  _, params = runlocal
  lib.save_params(params, str(tmp_path / 'p.npz'))
  jax.tree.map(np.testing.assert_array_equal, lib.load_params(str(tmp_path / 'p.npz')), params)


def test_leaf_errors_measure_a_zero_gradient_against_the_tree():
  want = {'a': np.array([1.0, -2.0]), 'b': {'c': np.array([0.0, 0.0])}}
  got = {'a': np.array([1.0, -2.002]), 'b': {'c': np.array([1e-7, 0.0])}}
  errors = lib.leaf_errors(got, want)
  assert errors['/a'] == pytest.approx(1e-3)
  assert errors['/b/c'] == pytest.approx(1e-7 / 2e-3)


def test_summary_and_table():
  def child(scale, peak):
    return {**{row: scale * 1e-3 for row in lib.ROWS}, 'peak_gflops': peak}

  rounds = [{'round': r, 'jax': child(10 + r, 60.0), 'torch': child(20 + 4 * r, 50.0 + r)}
            for r in range(3)]
  summary = lib.summarise(rounds)
  assert summary['rows']['train_b32'] == pytest.approx(
      {'jax_ms': 11.0, 'torch_ms': 24.0, 'torch_over_jax': 24 / 11})
  assert summary['peak_gflops'] == {'jax': 60.0, 'torch': 51.0}
  table = lib.markdown(summary, {'load': '1.0 -> 2.0'})
  assert '| train_b32 | 11.00 | 24.00 | 2.18 |' in table
  assert '| matmul 2048^3 float32, best (GFLOP/s) | 286.3 (60.0) | 336.9 (51.0) | 1.18 |' in table
  assert table.rstrip().endswith('load: 1.0 -> 2.0')


def test_children_get_the_config_arguments():
  argv = ['prog', '--config=configs/msa_msd.py:runlocal', '--out=x',
          '--config.unet.num_heads=2', '--config', 'configs/msd.py']
  assert torch_sidebyside.config_args(argv) == [
      '--config=configs/msa_msd.py:runlocal', '--config.unet.num_heads=2', '--config',
      'configs/msd.py']
