"""A run's resolved config on disk: WORKDIR/config.json, written by the trainer, read by
every command that uses the workdir afterwards (`upgrade` completes one an older version
wrote)."""

import json
import os

import jax
import ml_collections


def save_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Writes the resolved config to WORKDIR/config.json (process 0)."""
  if jax.process_index() == 0:
    with open(os.path.join(workdir, 'config.json'), 'w') as f:
      f.write(config.to_json_best_effort(indent=2, sort_keys=True))


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The resolved config a run saved in `workdir` (for the evaluation and query CLIs)."""
  path = os.path.join(workdir, 'config.json')
  if not os.path.exists(path):
    raise FileNotFoundError(f'{path} not found: is {workdir!r} the workdir of a training run?')
  with open(path) as f:
    # JSON turns tuples into lists; the model and loss expect tuples.
    return upgrade(ml_collections.ConfigDict(json.load(f, object_hook=_lists_to_tuples)))


# Fields added after runs were saved without them, each with the value that reproduces what
# those runs did (not always the default of configs/common.py: mesh.fsdp_replicate '' keeps
# every FSDP-sized leaf sharded, as runs without a mesh section had it).
_ADDED = {
    'data.mixture': '',
    'loss.cdiff_weight': 0.0,
    'loss.cdiff_temperature': 0.1,
    'loss.cdiff_min_shift_seconds': 0.2,
    'loss.cdiff_max_shift_seconds': 1.0,
    'loss.cdiff_kinds': ('shift', 'segment_swap', 'random_swap'),
    'diffusion.objective': 'diffusion',
    'diffusion.flow_t_sampling': 'logit_normal',
    'diffusion.min_snr_gamma': 0.0,
    'train.compute_dtype': 'float32',
    'train.remat': 'none',
    'train.bidirectional_interval': 0,
    'train.ema_decay': 0.0,
    'train.encoder_lr_scale': 1.0,
    'train.init_from': '',
    'train.cache_video_features': False,
    'eval.num_memorisation_clips': 1024,
    'eval.retrieval_pooling': 'clip',
    'eval.guidance_interval': (),
    # Read only before training starts (core/preflight.py): the :runlocal values older runs
    # had. Under eval, with what a continued run may change: it decides no trained state.
    'eval.synthetic_defaults': {'num_classes': 16, 'num_test_clips': 512},
    'unet.label_condition': False,
    'unet.batch_chunk': 0,
    'unet.pixel_skip': False,
    'model.video_stem': 'patchify',
    'loss.video_class_weight': 0.0,
    'loss.hue_negatives': False,
    'loss.hue_negative_angles': (90.0, 180.0, 270.0),
    'loss.cross_time_weight': 0.0,
    'loss.cross_time_scale': 3,
    'loss.cross_time_steps': 0,
    'mesh.data': -1,
    'mesh.fsdp': 1,
    'mesh.fsdp_min_size': 2**16,
    'mesh.fsdp_replicate': '',
    # Unused while train.bidirectional_interval is 0 (no a2v denoiser).
    'a2v.image_size': 32,
    'a2v.widths': (64, 128, 256),
    'a2v.attention_levels': (2,),
    'a2v.level_scales': (),
    'a2v.blocks_per_level': 2,
    'a2v.num_groups': 8,
    'a2v.num_heads': 4,
    'a2v.stem_patch': 2,
    'a2v.aligned_conditioning': True,
    'a2v.loss_weight': 1.0,
    'a2v.batch_size': 0,
    'a2v.stop_gradient': False,
    'a2v.guidance': 3.0,
    'a2v.num_eval_clips': 16,
    # The neural vocoder came later. A workdir saved without it gets the :runlocal vocoder
    # (minutes to train on a CPU) rather than the full-size one (hours), whatever its scale:
    # every workdir of that age that we know of is a :runlocal one.
    'vocoder.seed': 0,
    'vocoder.width': 128,
    'vocoder.num_blocks': 4,
    'vocoder.projections': 4,
    'vocoder.inference_projections': 32,
    'vocoder.periods': (2, 3, 5, 7, 11),
    'vocoder.num_scales': 1,
    'vocoder.disc_channels': (16, 32, 64),
    'vocoder.segment_frames': 80,
    'vocoder.batch_size': 16,
    'vocoder.num_steps': 3_000,
    'vocoder.learning_rate': 1e-3,
    'vocoder.gan_start_step': 3_000,
    'vocoder.mel_weight': 45.0,
    'vocoder.feature_weight': 2.0,
    'vocoder.stft_sizes': ((128, 32), (1024, 256)),
    'vocoder.stft_weight': 15.0,
    'vocoder.num_check_clips': 256,
}


def upgrade(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`config` (a workdir's, possibly saved by an older version) with every field it lacks.

  Each added field takes the value that reproduces the old run, so the rest of the code
  reads every field directly. `config` is changed in place and returned.
  """
  if 'seed' not in config.data:
    # A run without data.seed drew its synthetic world from the run's seed.
    config.data.seed = config.seed
  for path, value in _ADDED.items():
    section, field = path.split('.')
    if section not in config:
      config[section] = ml_collections.ConfigDict()
    if field not in config[section]:
      config[section][field] = value
  return config


# Fields a run continued in the same workdir may change: they fix neither the checkpointed
# state nor the training it continues. How long and how often (a longer num_steps extends the
# run), when to stop on non-finite steps, init_from (read only without checkpoints), remat and
# unet.batch_chunk (the same math, another program), evaluation and sampling, the separately
# trained evaluator networks and vocoder, the device layout (a restore reshards), the prefetch
# depth and where the same data lives. Not data.worker_count: grain's saved iterator state
# holds it and refuses another ("Worker count in checkpoint does not match", grain 0.2), so it
# is named here first.
# Any other field that differs from the checkpoints' config stops the resume (train._resume).
RESUME_MAY_CHANGE = (
    'train.num_steps', 'train.log_every_steps', 'train.checkpoint_every_steps',
    'train.eval_every_steps', 'train.keep_checkpoints', 'train.max_skipped_steps',
    'train.init_from', 'train.remat', 'unet.batch_chunk', 'eval.*', 'evaluator.*', 'vocoder.*',
    'mesh.*', 'a2v.num_eval_clips', 'a2v.guidance', 'data.prefetch_buffer_size', 'data.data_dir')


def resume_differences(saved: dict, config: ml_collections.ConfigDict) -> list[tuple]:
  """(path, saved value, this run's value) for each field where the config `saved` with a
  checkpoint (a dict from JSON) and `config` differ, but for RESUME_MAY_CHANGE.

  `saved` is completed by `upgrade` first, and only fields both configs have are compared,
  so fields added or removed since the checkpoint was written are not differences.
  """
  if isinstance(saved.get('data'), dict):  # upgrade needs the data section.
    saved = json.loads(upgrade(ml_collections.ConfigDict(saved)).to_json_best_effort())
  theirs, ours = _flat(saved), _flat(json.loads(config.to_json_best_effort()))
  may_change = lambda path: (path in RESUME_MAY_CHANGE or
                             path.split('.')[0] + '.*' in RESUME_MAY_CHANGE)
  return [(path, theirs[path], ours[path]) for path in sorted(theirs.keys() & ours.keys())
          if theirs[path] != ours[path] and not may_change(path)]


def _flat(tree: dict, prefix: str = '') -> dict:
  """{'section.field': value} of a nested dict."""
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(_flat(value, f'{prefix}{key}.'))
    else:
      out[f'{prefix}{key}'] = value
  return out


def _as_tuple(value):
  """JSON lists (nested ones too, e.g. vocoder.stft_sizes) -> tuples."""
  return tuple(_as_tuple(v) for v in value) if isinstance(value, list) else value


def _lists_to_tuples(obj: dict) -> dict:
  return {k: _as_tuple(v) for k, v in obj.items()}
