"""What every command-line entry point shares: runtime setup and clean error reporting."""

import logging as std_logging
import os
import re
import sys

from absl import flags
from absl import logging
from ml_collections import config_flags
import jax

from gmscavp_jax.diffusion import samplers
from gmscavp_jax.data import media
from gmscavp_jax.infra import errors

# Errors that mean "the user asked for something that cannot work": reported as one line.
USER_ERRORS = (errors.ConfigError, media.MediaError, FileNotFoundError,
               errors.NonFiniteError)


def setup() -> None:
  """Persistent compilation cache and logging, before any jax computation."""
  cache = os.environ.get('GMSCAVP_COMPILATION_CACHE',
                         os.path.join(os.path.expanduser('~'), '.cache', 'gmscavp_jax', 'xla'))
  # A CPU split into fake devices (XLA_FLAGS) runs without the cache: with jaxlib 0.10.2 a
  # multi-device CPU program with collectives read back from it deadlocks at its first
  # execution (the device threads wait in different all-gathers), freshly compiled it runs.
  fake = re.search(r'xla_force_host_platform_device_count=(\d+)', os.environ.get('XLA_FLAGS', ''))
  if fake and int(fake.group(1)) > 1:
    cache = ''
  if cache:
    jax.config.update('jax_compilation_cache_dir', cache)
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 1.0)
  logging.set_verbosity(logging.INFO)
  logging.get_absl_handler().addFilter(_quiet_libraries)


def define_distributed_flags() -> dict:
  """--coordinator_address/--num_processes/--process_id for multi-process runs."""
  return {
      'coordinator_address': flags.DEFINE_string(
          'coordinator_address', None, 'HOST:PORT of process 0, for a multi-process run '
          'started by hand (TPU pods and SLURM jobs are detected without it).'),
      'num_processes': flags.DEFINE_integer('num_processes', None,
                                            'Processes in the run (with --coordinator_address).'),
      'process_id': flags.DEFINE_integer('process_id', None,
                                         'This process, 0..num_processes-1.'),
  }


def init_distributed(defined: dict) -> None:
  """Joins a multi-process run through `jax.distributed.initialize`, before any jax work.

  With --coordinator_address the three flags say everything. Otherwise a SLURM job step of
  several tasks or a multi-worker TPU VM is detected and jax reads the topology from its
  environment; a single process (the default) initialises nothing.
  """
  values = {name: holder.value for name, holder in defined.items()}
  if values['coordinator_address']:
    missing = [f'--{k}' for k in ('num_processes', 'process_id') if values[k] is None]
    if missing:
      raise errors.ConfigError(
          f'--coordinator_address={values["coordinator_address"]}: expected '
          f'{" and ".join(missing)} as well')
    jax.distributed.initialize(**values)
  elif _in_multiprocess_cluster(os.environ):
    jax.distributed.initialize()
  else:
    return
  logging.info('process %d of %d, %d local / %d global devices', jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())


def _in_multiprocess_cluster(env) -> bool:
  """Whether the environment is one task of a SLURM step or one worker of a TPU pod slice."""
  if int(env.get('SLURM_STEP_NUM_TASKS', env.get('SLURM_NTASKS', '1')) or 1) > 1:
    return True
  return len([h for h in env.get('TPU_WORKER_HOSTNAMES', '').split(',') if h]) > 1


def _quiet_libraries(record) -> bool:
  """Drops the INFO lines Orbax and grain log for every save; warnings still pass."""
  chatty = '/orbax/' in record.pathname or '/grain/' in record.pathname
  return not chatty or record.levelno >= std_logging.WARNING


def run_or_explain(fn, *args, **kwargs):
  """Calls `fn`; a user error ends the program with its message and exit status 1."""
  try:
    return fn(*args, **kwargs)
  except USER_ERRORS as e:
    logging.error('%s', e)
    print(f'error: {e}', file=sys.stderr)
    sys.exit(1)


def define_sampler_flags() -> dict:
  """--sampler/--steps/--guidance/--eta (DESIGN §7); their values feed `sampler_args`."""
  return {
      'sampler': flags.DEFINE_enum('sampler', None, list(samplers.SAMPLERS),
                                   'Sampler (default: config eval.sampler): ddpm, ddim or '
                                   "dpmpp2m for diffusion.objective 'diffusion', euler or "
                                   "heun for 'flow'."),
      'num_steps': flags.DEFINE_integer('steps', None,
                                        'Sampling steps (default: eval.sample_steps).'),
      'guidance': flags.DEFINE_float('guidance', None,
                                     'Guidance scale (default: eval.guidance).'),
      'eta': flags.DEFINE_float('eta', None, 'DDIM eta (default: eval.eta).'),
  }


def sampler_args(defined: dict) -> dict:
  """{'sampler', 'num_steps', 'guidance', 'eta'} from `define_sampler_flags`' holders."""
  return {name: holder.value for name, holder in defined.items()}


def define_evaluator_dir_flag():
  """--evaluator_dir: the root of the per-dataset networks (evaluators, alignment guide,
  neural vocoder)."""
  return flags.DEFINE_string(
      'evaluator_dir', None, 'Root of the per-dataset networks: evaluators, alignment guide, '
      'neural vocoder (default: $GMSCAVP_EVALUATORS or ~/.cache/gmscavp_jax/evaluators).')


def define_vocoder_flag():
  """--vocoder: how log-mels become audio (generate, evaluate, demo)."""
  return flags.DEFINE_enum(
      'vocoder', 'auto', ['auto', 'neural', 'griffin_lim'],
      "Log-mel -> audio: 'neural' (the dataset's GAN vocoder, trained once on first use and "
      "kept beside the evaluators), 'griffin_lim', or 'auto' (neural if already trained, "
      'else Griffin-Lim).')


def define_dataset_config_flag(required: bool = True):
  """--config: an experiment config file naming a dataset (the per-dataset networks' tools)."""
  holder = config_flags.DEFINE_config_file(
      'config', None, 'Experiment config file naming the dataset, e.g. '
      'configs/msa_msd.py:runlocal.', lock_config=True)
  if required:
    flags.mark_flags_as_required(['config'])
  return holder
