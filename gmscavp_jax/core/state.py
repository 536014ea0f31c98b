"""The train state: build it, lay it out on a mesh, jit its step, restore it from a workdir.

`build` makes the models, optimizers and a fresh state laid out by the FSDP rule
(`state_shardings`); `jit_train_step` compiles `steps.train_step` for that layout;
`restore_workdir` (with `restore_params` / `restore_generator`) gives the inference commands
the newest checkpoint's params to sample and embed with (`train_state.inference_field`: the EMA
with train.ema_decay > 0), without optimizer state; `initialise_from` starts a fine-tuning run
from them (train.init_from).
"""

from collections.abc import Callable
import functools
import os
from typing import Any, NamedTuple

from absl import logging
import jax
import jax.numpy as jnp
from jax.sharding import Mesh
import ml_collections

from gmscavp_jax.core import config_io
from gmscavp_jax.core import phases
from gmscavp_jax.core import steps
from gmscavp_jax.core import train_state
from gmscavp_jax.infra import checkpointing
from gmscavp_jax.infra import errors
from gmscavp_jax.infra import sharding


def _init_key(config: ml_collections.ConfigDict) -> jax.Array:
  # An rbg key: threefry's init graph takes ~3x longer to compile on CPU for no benefit here.
  return jax.random.key(config.seed, impl='rbg')


def state_shardings(config: ml_collections.ConfigDict, models, txs, mesh):
  """The train state's layout on `mesh`: params and Adam moments by the FSDP rule."""
  abstract = jax.eval_shape(functools.partial(steps.init_state, config, models, txs),
                            _init_key(config))
  return sharding.tree_shardings(abstract, mesh, config)


def build(config: ml_collections.ConfigDict, mesh):
  """Models, optimizers, and a freshly initialised train state laid out on `mesh`."""
  models = steps.build_models(config)
  txs = steps.make_optimizers(config)
  init = jax.jit(functools.partial(steps.init_state, config, models, txs),
                 out_shardings=state_shardings(config, models, txs, mesh))
  return models, txs, init(_init_key(config))


def layout_of(state):
  """The shardings of a laid-out train state (what `state_shardings` gave it)."""
  return jax.tree.map(lambda x: x.sharding, state)


def jit_train_step(models, txs, config: ml_collections.ConfigDict, mesh, phase: phases.Phase,
                   state_sh):
  """`steps.train_step` of `phase` jitted for `mesh`, the state donated.

  The state keeps its (FSDP) layout `state_sh` (from `state_shardings` or `layout_of`)
  across the step; the batch is split over every device. With mesh.fsdp > 1 the params are
  gathered whole for the forward and backward pass and the gradients reduce-scattered back
  onto the shards (ZeRO-3).
  """
  repl, batch_sh = sharding.replicated(mesh), sharding.batch_sharded(mesh)
  gather = None
  if mesh.shape[sharding.FSDP_AXIS] > 1:
    whole = jax.tree.map(lambda _: repl, state_sh.params)
    gather = lambda params: jax.lax.with_sharding_constraint(params, whole)
  return jax.jit(functools.partial(steps.train_step, models=models, txs=txs, config=config,
                                   phase=phase, gather=gather),
                 in_shardings=(state_sh, batch_sh, repl), out_shardings=(state_sh, repl),
                 donate_argnums=(0,))


def abstract_params(config: ml_collections.ConfigDict, models, mesh):
  """Shape/dtype structs of the inference params (`train_state.inference_field`: params or their
  EMA, one tree shape), laid out on `mesh` as the train state lays that field out.

  Nothing is allocated: the params' init is only traced, with no optimizer. The FSDP rule
  reads each leaf's path, so the params are placed under their field's name as in the state.
  """
  abstract = jax.eval_shape(functools.partial(steps.init_params, config, models),
                            _init_key(config))
  field = train_state.inference_field(config)
  layout = sharding.tree_shardings({field: abstract}, mesh, config)[field]
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      abstract, layout)


def restore_params(workdir: str, config: ml_collections.ConfigDict, mesh):
  """(models, params, step) from the newest checkpoint in `workdir` (for the CLIs).

  The params are those to sample and embed with: the EMA with train.ema_decay > 0
  (`train_state.inference_field`). Nothing else is built, allocated or read.
  """
  models = steps.build_models(config)
  ckpt = checkpointing.Checkpointer(workdir, keep=config.train.keep_checkpoints)
  restored = ckpt.restore_latest_params(abstract_params(config, models, mesh),
                                        field=train_state.inference_field(config))
  ckpt.close()
  if restored is None:
    raise FileNotFoundError(f'no checkpoint in {checkpointing.checkpoint_dir(workdir)}')
  return models, restored[0], restored[1]


def restore_generator(workdir: str, config: ml_collections.ConfigDict, mesh):
  """`restore_params` for the CLIs that sample: a ConfigError if the denoiser is untrained."""
  models, params, step = restore_params(workdir, config, mesh)
  if not steps.generator_trained(config, step):
    raise errors.ConfigError(
        f'config.diffusion.training={config.diffusion.training!r}: the checkpoint at step '
        f'{step} in {workdir} has no trained denoiser yet')
  return models, params, step


class Restored(NamedTuple):
  """A trained workdir ready to run: its config, mesh, models, newest params and their step."""
  config: ml_collections.ConfigDict
  mesh: Mesh
  models: steps.Models
  params: Any
  step: int


def restore_workdir(workdir: str, config: ml_collections.ConfigDict | None = None,
                    restore: Callable = restore_params) -> Restored:
  """The newest checkpoint of `workdir` with the config and mesh it runs on (the inference
  commands' one restore).

  Args:
    workdir: a training run's workdir.
    config: its config, when the caller already loaded (or adjusted) it; None reads
      WORKDIR/config.json.
    restore: `restore_params`, `restore_generator`, or another (workdir, config, mesh) ->
      (models, params, step) that also checks what the caller needs trained.
  """
  config = config_io.load_config(workdir) if config is None else config
  mesh = sharding.mesh_from_config(config)
  return Restored(config, mesh, *restore(workdir, config, mesh))


# What fixes the params' shapes: a run initialised from another must agree on these.
_SHAPE_SECTIONS = ('model', 'unet', 'a2v')
_SHAPE_FIELDS = ('data.num_frames', 'data.image_size', 'data.num_classes', 'audio.n_mels',
                 'train.bidirectional_interval', 'loss.video_class_weight')


def _shape_differences(a: ml_collections.ConfigDict, b: ml_collections.ConfigDict) -> list:
  """'section.field: A vs B' for each shape-fixing field where configs `a` and `b` differ."""
  paths = list(_SHAPE_FIELDS)
  for section in _SHAPE_SECTIONS:
    paths += [f'{section}.{k}' for k in sorted(set(a[section]) | set(b[section]))]
  out = []
  for path in paths:
    section, field = path.split('.')
    va, vb = a[section].get(field), b[section].get(field)
    if va != vb:
      out.append(f'{path}: {va!r} vs {vb!r}')
  return out


def _abstract_params(config: ml_collections.ConfigDict):
  """The shapes and dtypes of `config`'s params, without computing any."""
  return jax.eval_shape(functools.partial(steps.init_params, config, steps.build_models(config)),
                        _init_key(config))


def check_init_from(source: str, config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The config of `source`, the workdir `config.train.init_from` names, once it is known to
  be a trained run whose params fit `config`'s models. Compares abstract params only, so the
  trainer checks before it builds or compiles anything.

  Raises errors.ConfigError naming the config fields that differ, or what is missing.
  """
  if not os.path.isfile(os.path.join(source, 'config.json')):
    raise errors.ConfigError(f'config.train.init_from={source!r}: expected the workdir of a '
                             'training run (with config.json)')
  source_config = config_io.load_config(source)
  # Compared before any read: a mismatch is the config's fault, not a damaged checkpoint.
  shapes = lambda tree: jax.tree.map(lambda x: (x.shape, x.dtype), tree)
  if shapes(_abstract_params(source_config)) != shapes(_abstract_params(config)):
    differing = _shape_differences(source_config, config) or ['none of the model fields']
    raise errors.ConfigError(
        f'config.train.init_from={source!r}: its params do not fit this config\'s models; '
        f'differing fields (source vs this run): {"; ".join(differing)}')
  return source_config


def initialise_from(source: str, source_config: ml_collections.ConfigDict, state):
  """`state` (a fresh train state) with its params, and their EMA if it keeps one, replaced
  by the newest params of the workdir `source` (its EMA if it kept one); optimizer state and
  step stay fresh, so the run has a schedule of its own (fine-tuning). `source_config` is
  what `check_init_from` returned for `source`.

  Raises errors.ConfigError if no checkpoint of `source` can be restored.
  """
  ckpt = checkpointing.Checkpointer(source, keep=source_config.train.keep_checkpoints)
  restored = ckpt.restore_latest_params(checkpointing.abstract_like(state.params),
                                        field=train_state.inference_field(source_config))
  ckpt.close()
  if restored is None:
    raise errors.ConfigError(f'config.train.init_from={source!r}: no checkpoint there can be '
                             'restored')
  params, step = restored
  logging.info('initialised from %s (checkpoint %d): params restored, optimizer fresh',
               source, step)
  if isinstance(state, train_state.EmaTrainState):
    return state.replace(params=params, ema_params=jax.tree.map(jnp.copy, params))
  return state.replace(params=params)
