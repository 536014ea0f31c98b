"""The studies runner on fake runs: rows and command lines, resume, baseline reuse, report."""

import ast
import json
import os
import subprocess
import sys

from absl import app
import matplotlib.pyplot as plt
import pytest

from gmscavp_jax.tools import studies

EVAL = dict(sampler='dpmpp2m', sample_steps=25, guidance=5.0, num_metric_clips=256)


def write_trained(workdir, *, seed=0, num_steps=10, experiment='msa_msd', **fields):
  """A run as `main` leaves it: config.json and results.json at its last step."""
  os.makedirs(workdir, exist_ok=True)
  config = {'experiment': experiment, 'seed': seed, 'train': {'num_steps': num_steps},
            'eval': dict(EVAL), 'data': {'num_train_clips': 200_000, 'mixture': ''},
            'model': {'scale_grids': [1, 1, 1, 1, 1]}}
  for field, value in fields.items():
    group, key = field.split('.')
    config[group][key] = value
  with open(os.path.join(workdir, 'config.json'), 'w') as f:
    json.dump(config, f)
  with open(os.path.join(workdir, 'results.json'), 'w') as f:
    json.dump({'step': num_steps}, f)


def fake_evaluation(workdir, out, flags):
  """What `evaluate` merges into OUT/results.json: metrics that depend on the settings."""
  with open(os.path.join(workdir, 'config.json')) as f:
    config = json.load(f)
  steps = int(flags.get('steps', config['eval']['sample_steps']))
  path = os.path.join(out, 'results.json')
  results = {}
  if os.path.exists(path):
    with open(path) as f:
      results = json.load(f)
  with open(os.path.join(workdir, 'results.json')) as f:
    step = json.load(f)['step']
  grids = config['model']['scale_grids'][0]
  results.update({
      'evaluate/step': step, 'evaluate/sampler': flags.get('sampler', config['eval']['sampler']),
      'evaluate/sample_steps': steps,
      'evaluate/guidance': float(flags.get('guidance', config['eval']['guidance'])),
      'gen/num_clips': float(flags.get('num_clips', config['eval']['num_metric_clips'])),
      'gen/kld': 3.0 / steps + grids, 'gen/fad': 1.0, 'gen/align_acc': 50.0,
      'gen/onset_f1@100ms': 40.0 + steps / 10, 'retrieval/v2a_R@1': 5.0,
      'retrieval/a2v_R@1': 4.0, 'retrieval/ceiling_R@1': 58.0,
      'retrieval/class_ceiling_R@1': 3.0, 'gen/seconds_per_clip': 0.01 * steps,
      'evaluate/seconds': 12.0})
  if 'bidirectional_interval' in config['train']:
    interval = float(config['train']['bidirectional_interval'])
    results.update({'gen_a2v/psnr': 10.0 + interval, 'gen_a2v/psnr_shuffled': 9.0,
                    'gen_a2v/onset_f1@125ms': 15.0, 'gen_a2v/onset_f1@125ms_shuffled': 8.0,
                    'gen_a2v/onset_hit@125ms': 20.0, 'gen_a2v/onset_hit@125ms_shuffled': 10.0,
                    'gen_a2v/seconds_per_clip': 0.2})
  os.makedirs(out, exist_ok=True)
  with open(path, 'w') as f:
    json.dump(results, f)


class FakeCommands:
  """Stands in for `main` and `evaluate`: records argv, writes what the real ones would."""

  def __init__(self, fail=()):
    self.calls, self.fail = [], set(fail)

  def __call__(self, args, log_path):
    self.calls.append(args)
    flags = dict(a[2:].split('=', 1) for a in args[3:])
    with open(log_path, 'a') as f:
      f.write(f'{args[2]}\n')
    workdir = flags['workdir']
    if os.path.basename(flags.get('output_dir', workdir)) in self.fail:
      return 2
    if args[2] == 'gmscavp_jax.main':
      overrides = {k[len('config.'):]: v for k, v in flags.items() if k.startswith('config.')}
      fields = {}
      if 'model.scale_grids' in overrides:
        grids = overrides['model.scale_grids']
        fields['model.scale_grids'] = list(ast.literal_eval(grids))
      if 'train.bidirectional_interval' in overrides:
        fields['train.bidirectional_interval'] = int(overrides['train.bidirectional_interval'])
      write_trained(workdir, seed=int(overrides['seed']),
                    num_steps=int(overrides.get('train.num_steps', 10)), **fields)
    else:
      fake_evaluation(workdir, flags.get('output_dir', workdir), flags)
    return 0


def _rows_of(md: str) -> list:
  return [l for l in md.splitlines()
          if l.startswith('| ') and not l.startswith(('| setting', '| ---'))]


def _is_png(path) -> bool:
  image = plt.imread(str(path))
  return image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100


def test_sampling_steps_rows_resume_and_report(tmp_path):
  workdir, root, out = tmp_path / 'run', tmp_path / 'root', tmp_path / 'docs'
  write_trained(str(workdir))
  options = studies.Options(workdir=str(workdir), samplers=('ddim', 'dpmpp2m'),
                            sample_steps=(10, 25), num_clips=8)
  fake = FakeCommands()
  run = lambda o=options: studies.run_study('sampling_steps', str(root), o, out=str(out),
                                            run_command=fake, argv=['studies', 'x'])
  assert run() == 0
  assert [c[2] for c in fake.calls] == ['gmscavp_jax.evaluate'] * 4
  assert fake.calls[0][3:] == [f'--workdir={workdir}', '--sampler=ddim', '--steps=10',
                               '--num_clips=8', f'--output_dir={root}/sampling_steps/ddim-10']
  md = (out / 'sampling_steps.md').read_text()
  assert '- command: `python -m gmscavp_jax.tools.studies x`' in md
  header = '| setting | KLD ↓ | FAD ↓ | Align Acc ↑ | onset F1@100ms ↑ | s / clip ↓ |'
  assert header in md
  rows = _rows_of(md)
  assert len(rows) == 4 and rows[0].startswith('| ddim, 10 steps | 1.30 | 1.00 |')
  assert rows[0].split(' | ')[5] == '0.100' and rows[0].split(' | ')[6] == 'reused'
  assert _is_png(out / 'sampling_steps.png')
  study = json.loads((root / 'sampling_steps' / 'study.json').read_text())
  assert study['rows'][3]['results']['evaluate/sample_steps'] == 25
  assert run() == 0 and len(fake.calls) == 4  # Resumed: nothing left to do.
  # Other settings are another evaluation; the workdir's own one is reused where it matches.
  fake_evaluation(str(workdir), str(workdir), {'num_clips': '16', 'steps': '10',
                                               'sampler': 'ddim'})
  assert run(studies.Options(workdir=str(workdir), samplers=('ddim',), sample_steps=(10, 25),
                             num_clips=16)) == 0
  assert [c[4:6] for c in fake.calls[4:]] == [['--sampler=ddim', '--steps=25']]


def test_spatial_trains_rows_and_reuses_the_baseline(tmp_path):
  baseline, root, out = tmp_path / 'msa_msd-runlocal-seed0', tmp_path / 'root', tmp_path / 'd'
  write_trained(str(baseline), num_steps=7)
  fake_evaluation(str(baseline), str(baseline), {})  # Evaluated with the defaults already.
  fake = FakeCommands(fail={'grids4-4-4-1-1'})
  options = studies.Options(baseline=str(baseline))
  run = lambda: studies.run_study('spatial', str(root), options, overrides=[
      'train.num_steps=7'], out=str(out), configs_dir='cfg', run_command=fake, argv=['s'])
  assert run() == 1  # The failed row does not stop the others.
  row_dir = root / 'spatial' / 'grids2-2-2-1-1'
  assert fake.calls[0][2:] == [
      'gmscavp_jax.main', '--config=cfg/msa_msd.py:runlocal', f'--workdir={row_dir}',
      '--config.seed=0', '--config.train.num_steps=7',
      '--config.model.scale_grids=(2, 2, 2, 1, 1)']
  assert fake.calls[1][2:] == ['gmscavp_jax.evaluate', f'--workdir={row_dir}']
  assert [c[2] for c in fake.calls] == ['gmscavp_jax.main', 'gmscavp_jax.evaluate',
                                        'gmscavp_jax.main']
  md = (out / 'spatial.md').read_text()
  rows = _rows_of(md)
  assert rows[0].startswith('| temporal only (config) | 1.12 |') and '| reused |' in rows[0]
  assert rows[1].startswith('| grids (2, 2, 2, 1, 1) | 2.12 |')
  assert rows[2].startswith('| grids (4, 4, 4, 1, 1) | — |')
  assert '- trainings: 2 (rows reusing a trained run: 1); evaluations: 3' in md
  assert _is_png(out / 'spatial.png')
  fake.fail.clear()
  assert run() == 0
  assert [c[2] for c in fake.calls[3:]] == ['gmscavp_jax.main', 'gmscavp_jax.evaluate']
  assert _rows_of((out / 'spatial.md').read_text())[2].startswith('| grids (4, 4, 4, 1, 1) | 4.12')


@pytest.mark.parametrize('fields, match', [
    (dict(seed=1), 'seed 1'),
    (dict(experiment='msd'), "experiment 'msd'"),
    (dict(num_steps=5), r'train.num_steps=5 \(want 10\)'),
    (dict(stopped_at=4), 'not a run trained'),
])
def test_a_baseline_that_does_not_match_is_refused(tmp_path, fields, match):
  baseline = tmp_path / 'base'
  stopped_at = fields.pop('stopped_at', None)
  write_trained(str(baseline), **fields)
  if stopped_at:
    (baseline / 'results.json').write_text(json.dumps({'step': stopped_at}))
  with pytest.raises(app.UsageError, match=match):
    studies.run_study('spatial', str(tmp_path / 'r'), studies.Options(baseline=str(baseline)),
                      overrides=['train.num_steps=10'], out=str(tmp_path),
                      run_command=FakeCommands())


def test_data_scaling_rows_and_bidirectional_columns(tmp_path):
  baseline = tmp_path / 'base'
  write_trained(str(baseline))
  fake = FakeCommands()
  assert studies.run_study(
      'data_scaling', str(tmp_path / 'r'), studies.Options(
          baseline=str(baseline), sizes=(100, 400), mixtures=('synthetic[clips=10]:1,'
                                                              'synthetic[seed=2,clips=5]:3',)),
      eval_flags=['--num_clips=8'], out=str(tmp_path), run_command=fake, argv=['s']) == 0
  trained = [c for c in fake.calls if c[2] == 'gmscavp_jax.main']
  assert [c[-1] for c in trained] == [
      '--config.data.mixture=synthetic[clips=100]:1',
      '--config.data.mixture=synthetic[clips=400]:1',
      '--config.data.mixture=synthetic[clips=10]:1,synthetic[seed=2,clips=5]:3']
  evals = [c for c in fake.calls if c[2] == 'gmscavp_jax.evaluate']
  assert evals[-2][3:] == [f'--workdir={baseline}', '--num_clips=8',
                           f'--output_dir={tmp_path}/r/data_scaling/full']
  assert [r.split(' | ')[0] for r in _rows_of((tmp_path / 'data_scaling.md').read_text())] == [
      '| 100 clips', '| 400 clips', '| full train set (config)',
      '| mixture synthetic[clips=10]:1,synthetic[seed=2,clips=5]:3']
  assert _is_png(tmp_path / 'data_scaling.png')

  fake = FakeCommands()
  assert studies.run_study('bidirectional', str(tmp_path / 'r'),
                           studies.Options(intervals=(0, 2)), out=str(tmp_path),
                           run_command=fake, argv=['s']) == 0
  assert [c[-1] for c in fake.calls if c[2] == 'gmscavp_jax.main'] == [
      '--config.seed=0', '--config.train.bidirectional_interval=2']
  md = (tmp_path / 'bidirectional.md').read_text()
  # Audio-to-video scores beside their controls, where present (not every gen_a2v key).
  assert ('| a2v PSNR ↑ | a2v PSNR, shuffled ↑ | a2v onset F1@125ms ↑ | '
          'a2v onset F1@125ms, shuffled ↑ | a2v onset recall@125ms ↑ | '
          'a2v onset recall@125ms, shuffled ↑ | train | evaluate |') in md
  # The retrieval columns, then the ceilings of the same test clips (one value serves both
  # directions), then a2v PSNR.
  assert ('| v2a R@1 | a2v R@1 | timing-blind ceiling R@1 | class-only ceiling R@1 | '
          'a2v PSNR ↑ |') in md
  assert _rows_of(md)[1].split(' | ')[5:10] == ['5.0', '4.0', '58.0', '3.0', '12.0']


def test_main_runs_the_subcommand_and_exits_non_zero_on_failure(tmp_path, monkeypatch):
  from absl import flags  # pylint: disable=g-import-not-at-top
  fake = FakeCommands(fail={'ddim-5'})
  monkeypatch.setattr(studies.runs, 'run_subprocess', fake)
  workdir = tmp_path / 'run'
  write_trained(str(workdir))
  flags.FLAGS(['studies', f'--root={tmp_path}', f'--workdir={workdir}', '--samplers=ddim',
               '--sample_steps=5,7', '--guidance=2', f'--out={tmp_path}/docs'])
  try:
    with pytest.raises(app.UsageError, match='give one study'):
      studies.main(['studies'])
    with pytest.raises(app.UsageError, match='unknown study'):
      studies.main(['studies', 'colours'])
    with pytest.raises(SystemExit) as e:
      studies.main(['studies', 'sampling_steps'])
  finally:
    flags.FLAGS.unparse_flags()
  assert e.value.code == 1
  assert [c[4:8] for c in fake.calls] == [
      ['--sampler=ddim', '--steps=5', '--num_clips=64', '--guidance=2.0'],
      ['--sampler=ddim', '--steps=7', '--num_clips=64', '--guidance=2.0']]
  assert (tmp_path / 'docs' / 'sampling_steps.md').exists()
  assert fake.calls[0][1:3] == ['-m', 'gmscavp_jax.evaluate'] and fake.calls[0][0] == sys.executable


def test_runs_defines_no_flags_and_the_runners_share_theirs():
  # A fresh interpreter: this one has imported the runners already.
  script = '\n'.join([
      'from absl import flags',
      'from gmscavp_jax.tools import runs',
      "assert 'root' not in flags.FLAGS, 'runs.py defined flags at import'",
      'from gmscavp_jax.tools import ablation, studies',
      'assert ablation._RUNNER is studies._RUNNER is runs.define_runner_flags()',
      "flags.FLAGS(['x', '--root=/r', '--sampler=ddim'])",
      "print(studies._RUNNER.root.value, ablation._RUNNER.sampler.value)"])
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  result = subprocess.run([sys.executable, '-c', script], cwd=root, capture_output=True,
                          text=True, env=dict(os.environ, PYTHONPATH=root), timeout=300,
                          check=False)
  assert result.returncode == 0, result.stderr
  assert result.stdout.split() == ['/r', 'ddim']
