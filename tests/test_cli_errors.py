"""Every bad input to a command is one `error:` line naming it, with no traceback (issue 21).

A command line that cannot be parsed exits with status 2, a path that cannot be used with
status 1 (gmscavp_jax/cli.py). The messages of each kind of bad flag are checked in-process on
`cli.parse_flags`; real doors, run as subprocesses four at a time, check the wiring and the exit
statuses. Every subprocess fails before any jax computation (a few seconds of imports each).
"""

import concurrent.futures
import os
import re
import subprocess
import sys

from absl import flags
from ml_collections import config_flags
import pytest

from gmscavp_jax import cli
from gmscavp_jax.infra import errors
from tests.conftest import ROOT

# ml_collections loads config files with importlib's deprecated load_module().
pytestmark = pytest.mark.filterwarnings('ignore:the load_module:DeprecationWarning')
CONFIG = '--config=configs/msa.py:runlocal'

# case: (module, arguments, exit status, the one `error:` line). {name} is a path of `paths`.
CASES = {
    'main-ill-typed-field': (
        'gmscavp_jax.main', [CONFIG, '--workdir={new}', '--config.train.batch_size=abc'], 2,
        'error: --config.train.batch_size=abc: expected an integer'),
    'main-unknown-variant': (
        'gmscavp_jax.main', ['--config=configs/msa.py:runlcoal', '--workdir={new}'], 2,
        "error: --config=configs/msa.py:runlcoal: config variant 'runlcoal' is unknown; "
        "expected '' or 'runlocal'"),
    'main-workdir-is-a-file': (
        'gmscavp_jax.main', [CONFIG, '--workdir={file}'], 1,
        'error: --workdir={file}: is a file; expected a directory'),
    'generate-video-is-a-folder': (
        'gmscavp_jax.generate', ['--workdir={empty}', '--video={empty}', '--output_dir={new}_v'],
        1, 'error: --video={empty}: is a directory; expected a file'),
    'evaluate-read-only-output': (
        'gmscavp_jax.evaluate', ['--workdir={empty}', '--output_dir={read_only}/out'], 1,
        'error: --output_dir={read_only}/out: cannot be written ({read_only_reason}); expected a '
        'directory this user can write'),
    'retrieve-workdir-without-config': (
        'gmscavp_jax.retrieve', ['--workdir={empty}', '--test_index=0'], 1,
        "error: {empty}/config.json not found: is '{empty}' the workdir of a training run?"),
    'prepare-unknown-flag': (
        'gmscavp_jax.prepare', ['--layuot=generic'], 2,
        'error: --layuot: no such flag; did you mean --layout?'),
    'demo-usage-error': (  # An app.UsageError of main: one line, not the help text above it.
        'gmscavp_jax.demo', ['--workdir={empty}', '--max_upload_mb=0'], 2,
        'error: --max_upload_mb=0.0: expected a positive size'),
    'tool-missing-flag': (
        'gmscavp_jax.tools.render_synthetic', [CONFIG], 2,
        'error: --out: missing; this flag is required'),
}
HELP = ('gmscavp_jax.main', ['--helpshort'])
# What else stderr may hold: absl log lines and Python warnings, never help text or a traceback.
_LOG_LINE = re.compile(r'^([IWEF]\d{4} |WARNING:|\S+Warning: )')


def _paths(tmp) -> dict:
  """The paths the cases name."""
  (tmp / 'empty').mkdir()
  (tmp / 'a_file').write_text('not a folder')
  paths = {'new': str(tmp / 'new'), 'empty': str(tmp / 'empty'), 'file': str(tmp / 'a_file')}
  if os.geteuid() == 0:  # root writes through file modes; sysfs refuses it a new folder.
    paths.update(read_only='/sys', read_only_reason='Operation not permitted')
  else:
    (tmp / 'read_only').mkdir(mode=0o555)
    paths.update(read_only=str(tmp / 'read_only'), read_only_reason='Permission denied')
  return paths


def _run(module: str, args: list[str]) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, '-m', module, *args], cwd=ROOT, capture_output=True,
                        text=True, timeout=180, env=dict(os.environ, JAX_PLATFORMS='cpu'),
                        check=False)


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  """(every case's finished process, the paths), run four at a time."""
  paths = _paths(tmp_path_factory.mktemp('cli_errors'))
  commands = {case: (module, args) for case, (module, args, *_) in CASES.items()}
  commands['help'] = HELP
  with concurrent.futures.ThreadPoolExecutor(4) as pool:
    futures = {case: pool.submit(_run, module, [a.format(**paths) for a in args])
               for case, (module, args) in commands.items()}
  return {case: f.result() for case, f in futures.items()}, paths


@pytest.mark.parametrize('case', list(CASES))
def test_bad_input_is_one_error_line(runs, case):
  results, paths = runs
  _, _, status, line = CASES[case]
  r = results[case]
  assert r.returncode == status, r.stderr[-3000:]
  assert 'Traceback' not in r.stderr and 'FATAL' not in r.stderr
  lines = r.stderr.splitlines()
  assert [x for x in lines if x.startswith('error:')] == [line.format(**paths)], r.stderr[-3000:]
  assert all(_LOG_LINE.match(x) for x in lines if not x.startswith('error:')), r.stderr[-3000:]


def test_helpshort_still_prints_the_flags(runs):
  r = runs[0]['help']
  assert '--workdir' in r.stdout and '--config' in r.stdout
  assert 'error:' not in r.stderr and 'Traceback' not in r.stderr


def _parse(argv: list[str], capsys) -> tuple[int, list[str]]:
  """(exit status, stderr lines) of `cli.parse_flags` on flags like a door's."""
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file('config', None, 'Config file.', flag_values=fv,
                                  sys_argv=argv)
  flags.DEFINE_string('workdir', None, 'Workdir.', flag_values=fv)
  flags.DEFINE_integer('steps', None, 'Steps.', lower_bound=1, flag_values=fv)
  flags.DEFINE_enum('direction', 'v2a', ['v2a', 'a2v'], 'Direction.', flag_values=fv)
  flags.DEFINE(cli.GuidanceIntervalParser(), 'guidance_interval', None, 'Interval.',
               flag_values=fv)
  flags.mark_flags_as_required(['config', 'workdir'], flag_values=fv)
  capsys.readouterr()
  with pytest.raises(SystemExit) as e:
    cli.parse_flags(argv, fv)
  return e.value.code, capsys.readouterr().err.splitlines()


@pytest.mark.parametrize('args, line', [
    (['--config.train.batchsize=3'],
     '--config.train.batchsize: no such config field; did you mean --config.train.batch_size?'),
    (['--config.trian.batch_size=3'],
     '--config.trian.batch_size: no such config field; did you mean --config.train.batch_size?'),
    (['--config.train.zzqqx=3'],
     '--config.train.zzqqx: no such config field; expected a field of configs/msa.py:runlocal'),
    (['--config.train.batch_size.x=3'], '--config.train.batch_size.x: no such config field '
     '(train.batch_size is a value, not a group of fields)'),
    (['--config.train.batch_size=abc'], '--config.train.batch_size=abc: expected an integer'),
    (['--config.train.learning_rate=fast'],
     '--config.train.learning_rate=fast: expected a number'),
    (['--config.train.cache_video_features=maybe'],
     '--config.train.cache_video_features=maybe: expected true or false'),
    (['--workdri=w'], '--workdri: no such flag; did you mean --workdir?'),
    (['--zzqqx=1'], '--zzqqx: no such flag; see --helpfull for the flags'),
    (['--steps=0'], '--steps=0: 0 is not a positive integer'),
    (['--steps=ten'], '--steps=ten: expected an integer'),
    (['--direction=up'], '--direction=up: expected one of v2a, a2v'),
    (['--guidance_interval=5,1'],
     "--guidance_interval=5,1: expected 'all' or 'LO,HI' noise levels with 0 <= LO < HI"),
    (['--guidance_interval=low'],
     "--guidance_interval=low: expected 'all' or 'LO,HI' noise levels with 0 <= LO < HI"),
])
def test_bad_flags_are_one_line(args, line, capsys, monkeypatch):
  monkeypatch.chdir(ROOT)
  status, err = _parse(['prog', CONFIG, '--workdir=w', *args], capsys)
  assert (status, err) == (2, [f'error: {line}'])


@pytest.mark.parametrize('argv, line', [
    (['--config=configs/nope.py', '--workdir=w'], '--config=configs/nope.py: no such file; '
     'expected a config file, e.g. configs/msa.py:runlocal'),
    (['--config=configs/nope.py', '--workdir=w', '--config.seed=1'], '--config=configs/nope.py: '
     'no such file; expected a config file, e.g. configs/msa.py:runlocal'),
    (['--config=configs/msa.py:runlcoal', '--workdir=w'], "--config=configs/msa.py:runlcoal: "
     "config variant 'runlcoal' is unknown; expected '' or 'runlocal'"),
    ([CONFIG], '--workdir: missing; this flag is required'),
    ([], '--config, --workdir: missing; these flags are required'),
    (['--config.seed=1', CONFIG, '--workdir=w'],
     'Found --config.seed=1 in argv before a value for --config was specified'),
])
def test_bad_config_and_missing_flags_are_one_line(argv, line, capsys, monkeypatch):
  monkeypatch.chdir(ROOT)
  assert _parse(['prog', *argv], capsys) == (2, [f'error: {line}'])


def test_check_paths(tmp_path):
  a_file = tmp_path / 'a_file'
  a_file.write_text('x')
  with pytest.raises(errors.InputError, match=r'^--workdir=.*a_file: is a file; expected a '):
    cli.check_paths(dirs={'workdir': str(a_file)})
  with pytest.raises(errors.InputError, match=r'^--video=.*: is a directory; expected a file'):
    cli.check_paths(files={'video': str(tmp_path)})
  with pytest.raises(errors.InputError, match=r'^--out=.*a_file/x: cannot be written'):
    cli.check_paths(write_dirs={'out': str(a_file / 'x')})
  # Fine: not given, not there yet (made when it is written to), remote, or as asked.
  cli.check_paths(dirs={'workdir': None, 'videos': str(tmp_path / 'new')},
                  write_dirs={'out': str(tmp_path / 'out' / 'deep'), 'data_dir': 'gs://b/x'},
                  files={'video': str(a_file)})
  assert (tmp_path / 'out' / 'deep').is_dir() and os.listdir(tmp_path / 'out' / 'deep') == []


def test_every_command_uses_cli_run():
  # absl's own app.run prints a traceback or the whole help text for a bad command line.
  package = os.path.join(ROOT, 'gmscavp_jax')
  commands = [os.path.join(d, f) for d in (package, os.path.join(package, 'tools'))
              for f in sorted(os.listdir(d)) if f.endswith('.py')]
  commands = [c for c in commands if "if __name__ == '__main__':" in open(c).read()]
  assert len(commands) >= 15
  plain = [c for c in commands
           if 'cli.run(main)' not in open(c).read() or 'app.run(' in open(c).read()]
  assert not plain, f'call cli.run(main) instead of app.run(main) in {plain}'
