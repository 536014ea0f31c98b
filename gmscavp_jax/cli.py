"""What every command-line entry point shares: runtime setup and clean error reporting.

Every bad input ends in one line on stderr, `error: THING: WHAT WAS EXPECTED`, and no
traceback: a bad command line (`run`) with exit status 2, a path or value that cannot work
once the command starts (`check_paths`, `run_or_explain`) with exit status 1.
"""

import difflib
import functools
import logging as std_logging
import os
import re
import sys
import tempfile
from typing import NoReturn

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags
import jax

from gmscavp_jax.diffusion import guidance as guidance_lib
from gmscavp_jax.diffusion import samplers
from gmscavp_jax.data import media
from gmscavp_jax.infra import errors

# Errors that mean "the user asked for something that cannot work": reported as one line.
USER_ERRORS = (errors.ConfigError, errors.InputError, media.MediaError, FileNotFoundError,
               errors.NonFiniteError)
# The exit status of a command line that cannot be parsed or used (flags, config overrides,
# app.UsageError): 2, as for argparse and most Unix tools; a user error met later exits with 1.
USAGE_EXIT = 2


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
    print(f'error: {_one_line(str(e))}', file=sys.stderr)
    sys.exit(1)


def _one_line(text: str) -> str:
  """`text` with its lines joined: an error report is one line, whatever the message."""
  return ' '.join(line.strip() for line in text.splitlines() if line.strip())


def run(main) -> None:
  """`absl.app.run(main)` where every bad command line is one `error:` line, exit status 2.

  Covers what absl and ml_collections' config flags raise while parsing (an unknown, missing
  or ill-typed flag; a config file, variant or `--config.FIELD` that does not exist; an
  override of the wrong type) and an `app.UsageError` raised by `main`.
  """

  @functools.wraps(main)
  def main_with_usage_line(argv):
    try:
      return main(argv)
    except app.UsageError as e:  # absl would print the whole help text above it.
      usage_error(str(e))

  app.run(main_with_usage_line, flags_parser=parse_flags)


def usage_error(message: str) -> NoReturn:
  """Ends the program: `error: MESSAGE` on stderr, exit status 2."""
  print(f'error: {_one_line(message)}', file=sys.stderr)
  sys.exit(USAGE_EXIT)


# Besides flags.Error, ml_collections' config flags let these escape flag parsing: KeyError
# and AttributeError for an override of a missing field, TypeError and ValueError from a
# config's get_config, OSError (at first use) for a config file that cannot be read,
# ImportError for one whose imports fail (e.g. run outside the repository root).
_PARSE_ERRORS = (flags.Error, AttributeError, KeyError, TypeError, ValueError, OSError,
                 ImportError)


def parse_flags(argv: list[str], flag_values: flags.FlagValues = flags.FLAGS) -> list[str]:
  """absl's flags parser for `app.run`; a command line it rejects ends in `usage_error`."""
  try:
    rest = flag_values(argv)
    for name in _config_flag_names(flag_values):
      # A config file that failed to load is stored as an object raising OSError on first
      # use; use it now, so the failure is the command line's and not a later traceback.
      getattr(flag_values[name].value, 'keys', None)
    return rest
  except _PARSE_ERRORS as e:
    usage_error(explain_flag_error(e, argv, flag_values))


def _config_flag_names(flag_values: flags.FlagValues) -> list[str]:
  """The flags defined by `config_flags.DEFINE_config_file`."""
  # Their parser's type is public; its class is not exported by ml_collections.
  return [name for name in flag_values if flag_values[name].parser.flag_type() == 'config object']


def _argv_value(argv: list[str], name: str) -> str | None:
  """The last value given to --`name` in `argv` (as --name=V or --name V), if any."""
  value = None
  for i, arg in enumerate(argv):
    key, eq, rest = arg.lstrip('-').partition('=')
    if arg.startswith('-') and key == name:
      value = rest if eq else (argv[i + 1] if i + 1 < len(argv) else None)
  return value


def explain_flag_error(e: Exception, argv: list[str],
                       flag_values: flags.FlagValues = flags.FLAGS) -> str:
  """`THING: WHAT WAS EXPECTED` for an exception raised while parsing `argv`."""
  if isinstance(e, flags.UnrecognizedFlagError):
    close = difflib.get_close_matches(e.flagname, list(flag_values), n=1)
    hint = f'did you mean --{close[0]}?' if close else 'see --helpfull for the flags'
    return f'--{e.flagname}: no such flag; {hint}'
  if isinstance(e, flags.IllegalFlagValueError):
    return _explain_bad_values(e, flag_values)
  if isinstance(e, flags.Error):
    return str(e)
  for name in _config_flag_names(flag_values):
    path = _argv_value(argv, name)
    if path is None:
      continue
    if isinstance(e, (AttributeError, KeyError)):
      missing = _missing_override(name, path, argv, flag_values)
      if missing:
        return missing
    if isinstance(e, OSError) and not os.path.isfile(path.split(':', 1)[0]):
      return f'--{name}={path}: no such file; expected a config file, e.g. configs/msa.py:runlocal'
    return f'--{name}={path}: {_root_message(e)}'
  return _root_message(e)


def _root_message(e: BaseException) -> str:
  """The last line of the message of the exception at the root of `e`'s chain."""
  while e.__cause__ is not None or e.__context__ is not None:
    cause = e.__cause__ or e.__context__
    if not str(cause).strip():
      break
    e = cause
  text = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)  # Not its repr.
  lines = [line.strip() for line in text.splitlines() if line.strip()]
  return lines[-1] if lines else type(e).__name__


_ILLEGAL_VALUE = re.compile(r'^flag --([^=\s]+)=(.*?): (.*)$')
_KINDS = {'int': 'an integer', 'float': 'a number', 'bool': 'true or false'}


def _explain_bad_values(e: flags.IllegalFlagValueError, flag_values: flags.FlagValues) -> str:
  """One line for absl's `flag --NAME=VALUE: REASON` lines (one per rejected flag)."""
  missing, bad = [], []
  for line in str(e).splitlines():
    m = _ILLEGAL_VALUE.match(line)
    if not m:
      continue
    name, value, reason = m.groups()
    if reason.endswith('must have a value other than None.'):
      missing.append(f'--{name}')
    elif bad:
      continue
    elif reason.startswith('Error whilst parsing config file'):  # Its traceback follows.
      bad.append(f'--{name}={value}: {_root_message(e)}')
    else:
      bad.append(f'--{name}={value}: {_expected(flag_values, name, value) or reason}')
  if bad:
    return bad[0]
  if missing:
    return (f'{", ".join(missing)}: missing; '
            f'{"this flag is" if len(missing) == 1 else "these flags are"} required')
  return _one_line(str(e))


def _expected(flag_values: flags.FlagValues, name: str, value: str) -> str | None:
  """'expected an integer' (or a number, ...) when `value` is not of --`name`'s type."""
  if name not in flag_values:
    return None
  parser = flag_values[name].parser
  if getattr(parser, 'enum_values', None):
    return f'expected one of {", ".join(parser.enum_values)}'
  kind = _KINDS.get(parser.flag_type())
  try:
    getattr(parser, 'convert', parser.parse)(value)
  except (TypeError, ValueError):
    return f'expected {kind}' if kind else None
  return None  # The type is right; absl's reason (a bound, a validator) says what is wrong.


def _missing_override(name: str, path: str, argv: list[str],
                      flag_values: flags.FlagValues) -> str | None:
  """`--NAME.FIELD: no such config field; did you mean ...?` for the first override in `argv`
  of a field that the config file `path` does not have (None if there is none)."""
  try:
    config = flag_values[name].parser.parse(path)  # Loads it again: the failed parse kept none.
  except Exception:  # pylint: disable=broad-except
    return None  # Then the caller reports the original error.
  for arg in argv:
    m = re.match(rf'^--?(?:no)?{re.escape(name)}\.([^=]+)', arg)
    if not m:
      continue
    keys = m.group(1).split('.')
    node = config
    for i, key in enumerate(keys):
      if not hasattr(node, 'keys'):
        return (f'--{name}.{m.group(1)}: no such config field ({".".join(keys[:i])} is a '
                'value, not a group of fields)')
      field = key.split('[')[0]  # --config.a.b[0]=... indexes a tuple field.
      if field not in node.keys():
        close = difflib.get_close_matches(field, list(node.keys()), n=1)
        hint = (f'did you mean --{name}.{".".join(keys[:i] + close + keys[i + 1:])}?' if close
                else f'expected a field of {path}')
        return f'--{name}.{m.group(1)}: no such config field; {hint}'
      node = node[field]
  return None


def check_paths(*, dirs: dict | None = None, write_dirs: dict | None = None,
                files: dict | None = None) -> None:
  """Raises errors.InputError for the first path flag that cannot be used as asked.

  Each argument maps a flag name to its value (None: not given, not checked). `dirs` must not
  be files; `write_dirs` are made if missing and written to (a file made and removed), so that
  a folder the command cannot write stops it before any work; `files` must not be folders.
  Remote paths (gs://...) are left to their file system.
  """
  def local(given):
    return {flag: path for flag, path in (given or {}).items() if path and '://' not in path}

  for flag, path in {**local(dirs), **local(write_dirs)}.items():
    if os.path.exists(path) and not os.path.isdir(path):
      raise errors.InputError(f'--{flag}={path}: is a file; expected a directory')
  for flag, path in local(write_dirs).items():
    try:
      os.makedirs(path, exist_ok=True)
      with tempfile.TemporaryFile(dir=path):
        pass
    except OSError as e:
      raise errors.InputError(f'--{flag}={path}: cannot be written ({e.strerror}); expected a '
                              'directory this user can write') from e
  for flag, path in local(files).items():
    if os.path.isdir(path):
      raise errors.InputError(f'--{flag}={path}: is a directory; expected a file')


def define_sampler_flags() -> dict:
  """--sampler/--steps/--guidance/--eta (DESIGN §7) and --guidance_interval; their values
  feed `sampler_args`."""
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
      'guidance_interval': flags.DEFINE(
          GuidanceIntervalParser(), 'guidance_interval', None, "Guide only the steps whose "
          "noise level sigma = sqrt((1 - alpha_bar) / alpha_bar) is in (LO, HI]: 'LO,HI', or "
          "'all' for every step (default: eval.guidance_interval)."),
  }


class GuidanceIntervalParser(flags.ArgumentParser):
  """--guidance_interval's text as a tuple: 'all' -> (), 'LO,HI' -> (LO, HI)."""

  def parse(self, argument):
    if argument.strip().lower() == 'all':
      return ()
    try:
      return guidance_lib.check_guidance_interval(float(v) for v in argument.split(','))
    except ValueError:
      raise ValueError("expected 'all' or 'LO,HI' noise levels with 0 <= LO < HI") from None

  def flag_type(self):
    return 'guidance interval'


def sampler_args(defined: dict) -> dict:
  """{'sampler', 'num_steps', 'guidance', 'eta', 'guidance_interval'} from
  `define_sampler_flags`' holders."""
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
