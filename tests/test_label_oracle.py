"""unet.label_condition, the label oracle of issue 18's diagnosis: the denoiser trains and
samples with each clip's true classes beside the video, and a video without labels (generate,
the demo) is refused with a ConfigError."""

import numpy as np
import pytest

from gmscavp_jax.core import config_io
from gmscavp_jax.core import sampling
from gmscavp_jax.core import state as state_lib
from gmscavp_jax.evaluators import generation
from gmscavp_jax.infra import errors
from gmscavp_jax.infra import sharding
from gmscavp_jax import train
from tests.conftest import SMALLEST, tiny_config


def test_field_is_filled_for_old_workdirs():
  old = tiny_config('msa_msd')
  del old.unet['label_condition']
  assert config_io.upgrade(old).unet.label_condition is False


def test_oracle_trains_and_its_samples_follow_the_labels(tmp_path):
  config = tiny_config('msa_msd', **SMALLEST, **{
      'unet.label_condition': True, 'eval.num_generate_clips': 2, 'eval.num_summary_clips': 1})
  results = train.train_and_evaluate(config, str(tmp_path))
  assert np.isfinite(results['gen/onset_f1@100ms'])
  config, mesh, models, params, step = state_lib.restore_workdir(str(tmp_path))
  assert step == config.train.num_steps and config.unet.label_condition
  assert params['denoiser']['label_proj']['kernel'].shape[0] == config.data.num_classes
  clips = generation.test_clips(config, 2)
  generator = sampling.Generator(config, mesh, models)
  # The evaluation's sampler settings (eval.guidance): its program, read back from the
  # persistent compilation cache, where guidance 1 compiled another.
  a = generator.generate(params, clips['frames'], labels=clips['labels'])
  b = generator.generate(params, clips['frames'], labels=np.roll(clips['labels'], 1, axis=1))
  assert a.shape == (2, *generator.real_log_mel(clips['waveform']).shape[1:])
  assert np.abs(a - b).max() > 1e-4  # Same noise, other classes: other audio.
  with pytest.raises(errors.ConfigError, match='label_condition'):
    generator.generate(params, clips['frames'])
