"""Configs load, validate, and reject bad values with a message naming the field."""

import glob
import importlib
import json
import os
import subprocess
import sys

import ml_collections
import pytest

from configs import cavp, common, msa, msa_msd, msd
from gmscavp_jax.core import config_io
from gmscavp_jax.core import config_validation
from gmscavp_jax.infra import errors
from tests.conftest import ROOT, tiny_config


@pytest.mark.parametrize('module', [cavp, msa, msd, msa_msd])
@pytest.mark.parametrize('arg', [None, 'runlocal'])
def test_configs_are_valid(module, arg):
  config = module.get_config(arg)
  config_validation.validate(config, num_devices=1)
  for field in ('seed', 'train.num_steps', 'train.batch_size', 'train.learning_rate',
                'train.checkpoint_every_steps', 'train.eval_every_steps', 'data.name',
                'data.data_dir', 'eval.num_test_clips'):
    group = config
    for part in field.split('.'):
      assert part in group, f'DESIGN §7 field {field} missing from {module.__name__}'
      group = group[part]


def test_cavp_is_msa_at_one_temporal_level_without_adaptive_weights():
  c, m = cavp.get_config('runlocal'), msa.get_config('runlocal')
  assert c.model.scale_pools == (1, c.data.num_frames)
  assert len(m.model.scale_pools) > len(c.model.scale_pools)
  assert m.model.scale_pools[-1] == m.data.num_frames
  assert not c.loss.adaptive_weights and m.loss.adaptive_weights


def test_table3_generator_training():
  # cavp/msa: a second stage on frozen encoders, as many UNet steps as the joint configs.
  for module in (cavp, msa):
    c = module.get_config('runlocal')
    assert c.diffusion.training == 'frozen'
    assert c.train.num_steps - c.diffusion.encoder_steps == msa_msd.get_config(
        'runlocal').train.num_steps
  for module in (msd, msa_msd):
    assert module.get_config('runlocal').diffusion.training == 'joint'
  assert msd.get_config().model.scale_pools == cavp.get_config().model.scale_pools
  assert msa_msd.get_config().model.scale_pools == msa.get_config().model.scale_pools


def test_learning_rate_default_is_the_papers():
  assert msa.get_config().train.learning_rate == 1e-4


def test_unknown_variant_is_rejected():
  with pytest.raises(ValueError, match='variant'):
    msa.get_config('runlcoal')


@pytest.mark.parametrize('field,value,message', [
    ('model.scale_pools', (1, 3, 8), 'divide data.num_frames'),
    ('model.scale_pools', (1, 2, 4), 'coarsest'),
    ('model.scale_grids', (1, 1), 'one grid per scale'),
    ('model.video_stem', 'pixels', "'patchify' or 'conv'"),
    ('train.batch_size', 0, 'positive'),
    ('train.lr_schedule', 'linear', "'cosine' or 'constant'"),
    ('train.encoder_lr_scale', 0.0, 'a positive factor'),
    ('eval.batch_size', 0, 'a positive global batch'),  # Any other: the last batch is padded.
    ('loss.temperature_init', 5.0, 'temperature_max'),
    ('audio.fmax', 9000.0, 'sample_rate/2'),
    ('data.name', 'vggsound', 'data.data_dir'),
    ('unet.level_scales', (0, 9), 'video scale index'),
    ('unet.widths', (12, 32), 'divisible by unet.num_groups'),
    ('diffusion.training', 'later', "'joint', 'frozen' or 'none'"),
    ('diffusion.prediction', 'x0', "'eps' or 'v'"),
    ('diffusion.encoder_steps', 0, 'contrastive stage'),
    ('train.bidirectional_interval', 2, 'the frames'),  # With the cache on (below).
    ('eval.sampler', 'euler', 'one of'),
    ('eval.retrieval_pooling', 'frames', 'segments.*clip'),
    ('eval.guidance_interval', (5.0, 1.0), r'\(lo, hi\) with 0 <= lo < hi'),
    ('eval.guidance_interval', (1.0,), r'\(lo, hi\) with 0 <= lo < hi'),
    ('unet.batch_chunk', -2, r'-1 \(auto\)'),
    ('eval.num_generate_clips', 32, 'eval.num_test_clips'),
    ('loss.cdiff_weight', -0.5, 'weight >= 0'),
    ('loss.cdiff_temperature', 0.0, 'positive tau'),
    ('loss.cdiff_kinds', ('shift', 'flip'), 'non-empty subset'),
    ('loss.hue_negative_angles', (), r'hue turns in \(0, 360\)'),
    ('loss.hue_negative_angles', (90.0, 360.0), r'hue turns in \(0, 360\)'),
    ('loss.cross_time_weight', -1.0, 'weight >= 0'),
    ('loss.cross_time_steps', -1, 'step count >= 0'),
    ('data.mixture', 'synthetic:0', 'weight'),
    ('data.mixture', 'synthetic[clips=10,bogus=1]:1', 'bogus'),
    ('data.mixture', 'synthetic:1,vggsound:1', "data_dir for the prepared dataset 'vggsound'"),
])
def test_bad_values_name_the_field(field, value, message):
  config = tiny_config('msa', **{field: value})  # msa trains its denoiser in a second stage.
  if field == 'train.bidirectional_interval':
    config.train.cache_video_features = True
  with pytest.raises(errors.ConfigError, match=message) as e:
    config_validation.validate(config)
  assert f'config.{field.split(".")[0]}' in str(e.value)


def test_cross_time_scale_needs_two_segments():
  """The clip-level scale has one segment, so it cannot pair windows half a clip apart."""
  config = tiny_config('msa_msd', **{'loss.cross_time_weight': 1.0})
  config.loss.cross_time_scale = len(config.model.scale_pools) - 1
  with pytest.raises(errors.ConfigError, match='2 or more segments') as e:
    config_validation.validate(config)
  assert 'config.loss.cross_time_scale' in str(e.value)
  config.loss.cross_time_scale = 0
  config_validation.validate(config)
  config.loss.update(cross_time_weight=0.0, cross_time_scale=99)
  config_validation.validate(config)  # Off: the scale is not used.


@pytest.mark.parametrize('fields,message', [
    # The tiny clip is 8 frames at 8 fps: a 1 s shift is the whole clip.
    (dict(cdiff_max_shift_seconds=1.0), 'shorter than the clip'),
    (dict(cdiff_min_shift_seconds=0.5, cdiff_max_shift_seconds=0.25), 'shorter than the clip'),
])
def test_contrastive_diffusion_shifts(fields, message):
  config = tiny_config('msa_msd', **{'loss.cdiff_weight': 0.5})
  config_validation.validate(config)  # The tiny defaults with a 0.5 s maximum shift.
  config.loss.update(fields)
  with pytest.raises(errors.ConfigError, match=message) as e:
    config_validation.validate(config)
  assert 'config.loss.cdiff_max_shift_seconds' in str(e.value)
  off = tiny_config('msa_msd', **{'loss.cdiff_weight': 0.0})
  off.loss.update(fields)
  config_validation.validate(off)  # Off: the shift range is not used.
  none = tiny_config('msa_msd', **{'loss.cdiff_weight': 0.5, 'diffusion.training': 'none'})
  with pytest.raises(errors.ConfigError, match="diffusion.training='none'"):
    config_validation.validate(none)


def test_batch_not_divisible_by_devices():
  config = tiny_config('msa', **{'train.batch_size': 12})
  with pytest.raises(errors.ConfigError, match=r'multiple of the device count \(8\)'):
    config_validation.validate(config, num_devices=8)


def _main(*args):
  return subprocess.run([sys.executable, '-m', 'gmscavp_jax.main', *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=300)


def _error_lines(stderr: str) -> list[str]:
  return [line for line in stderr.splitlines() if line.startswith('error:')]


def test_cli_rejects_unknown_field_and_bad_value(tmp_path):
  # A misspelt override is a usage error (exit status 2); tests/test_cli_errors.py has the rest.
  r = _main('--config=configs/msa.py:runlocal', f'--workdir={tmp_path}',
            '--config.train.batch_sise=8')
  assert r.returncode == 2 and 'Traceback' not in r.stderr
  assert _error_lines(r.stderr) == ['error: --config.train.batch_sise: no such config field; '
                                    'did you mean --config.train.batch_size?']
  # A value that parses but cannot run is found by config_validation (exit status 1).
  r = _main('--config=configs/msa.py:runlocal', f'--workdir={tmp_path}',
            '--config.train.eval_every_steps=-5')
  assert r.returncode == 1 and 'Traceback' not in r.stderr
  assert [line for line in _error_lines(r.stderr)
          if 'config.train.eval_every_steps=-5: expected a positive integer' in line]
  assert len(_error_lines(r.stderr)) == 1


def _fields(config) -> set:
  """The dotted paths of every leaf field of `config`."""
  return {f'{k}.{f}' if f else k
          for k, v in config.items()
          for f in (_fields(v) if isinstance(v, ml_collections.ConfigDict) else [''])}


def test_upgrade_leaves_a_current_workdir_config_as_it_was(tmp_path):
  config = msa_msd.get_config('runlocal')
  config_io.save_config(config, str(tmp_path))
  loaded = config_io.load_config(str(tmp_path))
  assert loaded.to_dict() == config.to_dict()


# Every Table 3 run kept in docs, the current one and older ones (ablation_runs/COMMIT/RUN).
@pytest.mark.parametrize('run', sorted(glob.glob(os.path.join(ROOT, 'docs', 'ablation_runs',
                                                              '**', 'config.json'),
                                                 recursive=True)),
                         ids=lambda path: os.path.relpath(os.path.dirname(path),
                                                          os.path.join(ROOT, 'docs')))
def test_upgrade_completes_configs_saved_by_older_versions(run):
  with open(run) as f:
    saved = json.load(f)
  config = config_io.load_config(os.path.dirname(run))
  config_validation.validate(config)
  current = importlib.import_module(f"configs.{saved['experiment']}").get_config('runlocal')
  assert _fields(config) == _fields(current)
  # What those runs did (no a2v, no contrastive diffusion), their saved fields untouched.
  assert config.train.bidirectional_interval == 0 and config.loss.cdiff_weight == 0.0
  # They had no vocoder: they get the :runlocal one (what `generate --vocoder=neural` on such
  # a workdir finds or trains).
  assert config.vocoder.to_dict() == current.vocoder.to_dict()
  upgraded = json.loads(config.to_json())
  assert upgraded == {k: {**v, **saved.get(k, {})} if isinstance(v, dict) else saved[k]
                      for k, v in upgraded.items()}


def test_upgrade_gives_runs_from_before_data_seed_their_own_seed(tmp_path):
  config = msa.get_config('runlocal')
  config.seed = 3
  del config.data['seed']
  config_io.save_config(config, str(tmp_path))
  assert config_io.load_config(str(tmp_path)).data.seed == 3


def test_upgrade_gives_runs_from_before_the_mesh_a_data_only_mesh(tmp_path):
  config = msa.get_config('runlocal')
  del config['mesh']
  config_io.save_config(config, str(tmp_path))
  mesh = config_io.load_config(str(tmp_path)).mesh
  assert (mesh.data, mesh.fsdp, mesh.fsdp_min_size, mesh.fsdp_replicate) == (-1, 1, 2**16, '')
