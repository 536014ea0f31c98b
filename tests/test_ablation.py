"""The Table 3 runner on fake runs: resume logic, exact command lines, statistics, report."""

import json
import os
import sys

import matplotlib.pyplot as plt
import numpy as np
import pytest

from gmscavp_jax.tools import ablation
from gmscavp_jax.tools import runs

CONFIGS = ('cavp', 'msa', 'msd', 'msa_msd')
# Per config: (KLD, Align Acc); seed s adds s * (0.1, 1.0). The paper's ordering holds for KLD
# (lower is better) and not for Align Acc, where msd beats msa_msd.
BASE = {'cavp': (3.0, 40.0), 'msa': (2.5, 50.0), 'msd': (2.0, 70.0), 'msa_msd': (1.5, 60.0)}


def fake_results(name: str, seed: int) -> dict:
  """What evaluate would merge into results.json for run (name, seed)."""
  kld, acc = BASE.get(name, (5.0, 5.0))
  out = {key: 10.0 for key, _, _, _ in ablation.METRICS}
  out.update({'gen/kld': kld + 0.1 * seed, 'gen/align_acc': acc + seed,
              'retrieval/chance_R@1': 2.0, 'ref/gt/kld': 0.0, 'ref/gt/align_acc': 90.0 + seed,
              'ref/shuffled/align_acc': 10.0, 'eval/audio_classifier_acc': 99.0})
  for k in (1, 5, 10):  # The same test clips in every run: the same ceilings.
    out.update({f'retrieval/ceiling_R@{k}': 50.0 + k, f'retrieval/class_ceiling_R@{k}': 3.0 * k})
  return out


def write_run(root, name, seed, num_steps=10, step=None, evaluated=True, variant='runlocal'):
  workdir = os.path.join(root, ablation.run_name(name, variant, seed))
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, 'config.json'), 'w') as f:
    json.dump({'seed': seed, 'train': {'num_steps': num_steps}}, f)
  results = {'step': num_steps if step is None else step}
  if evaluated:
    results.update(fake_results(name, seed), **{'evaluate/step': num_steps})
  with open(os.path.join(workdir, 'results.json'), 'w') as f:
    json.dump(results, f)
  return workdir


class FakeCommands:
  """Stands in for `main` and `evaluate`: records argv, writes what the real ones would."""

  def __init__(self, fail_runs=()):
    self.calls, self.fail_runs = [], set(fail_runs)

  def __call__(self, args, log_path):
    self.calls.append(args)
    flags = dict(a[2:].split('=', 1) for a in args[3:])
    workdir = flags['workdir']
    run = os.path.basename(workdir)
    name, seed = run.split('-')[0], int(run.rsplit('seed', 1)[1])
    with open(log_path, 'a') as f:
      f.write(f'{args[2]} on {run}\nlast line\n')
    if run in self.fail_runs:
      return 3
    if args[2] == 'gmscavp_jax.main':
      write_run(os.path.dirname(workdir), name, seed,
                int(flags.get('config.train.num_steps', 10)), evaluated=False)
    else:
      with open(os.path.join(workdir, 'results.json')) as f:
        results = json.load(f)
      results.update(fake_results(name, seed), **{'evaluate/step': results['step']})
      with open(os.path.join(workdir, 'results.json'), 'w') as f:
        json.dump(results, f)
    return 0


def test_aggregate_means_and_stds(tmp_path):
  for name in CONFIGS:
    for seed in range(3 if name != 'msd' else 2):
      write_run(tmp_path, name, seed)
  write_run(tmp_path, 'msd', 2, evaluated=False)  # Trained, not evaluated: left out.
  agg = ablation.aggregate(str(tmp_path), CONFIGS, seeds=3)
  assert list(agg['configs']) == list(CONFIGS)
  assert agg['configs']['msd']['seeds'] == [0, 1]
  msa = agg['configs']['msa']
  assert msa['mean']['gen/kld'] == pytest.approx(2.6)
  assert msa['std']['gen/kld'] == pytest.approx(np.std([2.5, 2.6, 2.7], ddof=1))
  assert msa['mean']['gen/align_acc'] == pytest.approx(51.0)
  assert msa['std']['gen/align_acc'] == pytest.approx(1.0)
  assert agg['configs']['msd']['std']['gen/align_acc'] == pytest.approx(np.sqrt(0.5))
  assert msa['values']['gen/align_acc'] == [50.0, 51.0, 52.0]
  # References average over all 11 evaluated runs (3 + 3 + 2 + 3).
  assert agg['ref']['gt']['gen/align_acc'] == pytest.approx((3 * 91 * 3 + 90.5 * 2) / 11)
  assert agg['ref']['shuffled']['gen/align_acc'] == 10.0
  assert agg['chance_R@1'] == 2.0
  assert len(agg['runs']) == 11


def test_one_seed_has_no_std(tmp_path):
  write_run(tmp_path, 'msa', 0)
  agg = ablation.aggregate(str(tmp_path), ['msa'], seeds=1)
  assert agg['configs']['msa']['std']['gen/kld'] is None
  md = ablation.markdown(agg, ['ablation.py'])
  assert '| msa | ✓ | ✗ | 1 | 2.50 | 10.00 | 50.0 |' in md
  assert "ordering hold" not in md  # Needs all four configs.


def test_markdown_table_and_ordering(tmp_path):
  for name in CONFIGS:
    for seed in range(2):
      write_run(tmp_path, name, seed)
  write_run(tmp_path, 'other', 0)
  agg = ablation.aggregate(str(tmp_path), CONFIGS + ('other',), seeds=2)
  md = ablation.markdown(agg, ['x/ablation.py', '--root=/r', '--seeds=2'])
  lines = md.splitlines()
  assert '- command: `python -m gmscavp_jax.tools.ablation --root=/r --seeds=2`' in lines
  assert ('| config | MSA | MSD | seeds | KLD ↓ | FAD ↓ | Align Acc ↑ | onset F1@50ms ↑ | '
          'onset F1@100ms ↑ | onset precision@100ms ↑ | onset recall@100ms ↑ | v2a R@1 | '
          'v2a R@5 | v2a R@10 | a2v R@1 | a2v R@5 | a2v R@10 |') in lines
  marks = {l.split(' | ')[0][2:]: tuple(l.split(' | ')[1:3]) for l in lines
           if l.startswith('| ') and l.count('|') == 18}
  assert marks['cavp'] == ('✗', '✗') and marks['msa'] == ('✓', '✗')
  assert marks['msd'] == ('✗', '✓') and marks['msa_msd'] == ('✓', '✓')
  assert marks['other'] == ('?', '?')
  # mean ± std [95% t interval of the mean: 2 seeds, t(0.975, 1) = 12.71, 12.71 * std / sqrt 2]
  assert ('| msa_msd | ✓ | ✓ | 2 | 1.55 ± 0.07 [0.91, 2.19] | 10.00 ± 0.00 [10.00, 10.00] | '
          '60.5 ± 0.7 [54.1, 66.9] |') in md
  # (4 x (90 + 91) + 90) / 9 runs = 90.4.
  gt_row = '| ground-truth audio | — | — | — | 0.00 | — | 90.4 |'
  assert any(l.startswith(gt_row) for l in lines)
  assert any(l.startswith('| shuffled ground-truth audio |') for l in lines)
  chance = next(l for l in lines if l.startswith('| chance |')).split(' | ')
  assert chance[4] == '—' and chance[11] == '2.0' and chance[14] == '2.0'
  # The ceilings fill every retrieval column: one value serves both directions.
  ceiling = next(l for l in lines if l.startswith('| timing-blind ceiling |')).split(' | ')
  assert ceiling[4:11] == ['—'] * 7 and ceiling[11:] == ['51.0', '55.0', '60.0', '51.0', '55.0',
                                                        '60.0 |']
  class_only = next(l for l in lines if l.startswith('| class-only ceiling |')).split(' | ')
  assert class_only[11:14] == ['3.0', '15.0', '30.0']
  assert agg['ceilings']['retrieval/ceiling_R@5'] == 55.0
  assert "## Does the paper's ordering hold?" in md
  assert '- KLD: holds' in lines
  # Align Acc (higher is better): msd 70.5 beats msa_msd 60.5; msa and msd both beat cavp.
  assert '- Align Acc: does not hold (msd 70.5 > msa_msd 60.5)' in lines
  facts = ablation.ordering(agg)
  assert facts['gen/kld']['holds'] and not facts['gen/align_acc']['holds']
  # All 10.0 for FAD: every comparison is a tie, which is no improvement.
  assert not facts['gen/fad']['holds'] and len(facts['gen/fad']['violations']) == 5


def test_runs_evaluated_before_a_metric_existed_show_a_dash(tmp_path):
  # Runs evaluated before onset F1 at +-50 ms (e.g. docs/ablation_runs) lack that key: the
  # cell reads '—', the other columns their values, and the ordering skips the metric.
  for name in CONFIGS:
    workdir = write_run(tmp_path, name, 0)
    with open(os.path.join(workdir, 'results.json')) as f:
      results = json.load(f)
    del results['gen/onset_f1@50ms']
    for key in [k for k in results if 'ceiling' in k]:  # Evaluated before the ceilings too.
      del results[key]
    with open(os.path.join(workdir, 'results.json'), 'w') as f:
      json.dump(results, f)
  agg = ablation.aggregate(str(tmp_path), CONFIGS, seeds=1)
  md = ablation.markdown(agg, ['ablation.py'])
  assert '| msa | ✓ | ✗ | 1 | 2.50 | 10.00 | 50.0 | — | 10.0 | 10.0 | 10.0 | 10.0 |' in md
  assert 'gen/onset_f1@50ms' not in ablation.ordering(agg)
  # One seed a config: every comparison is flagged, none decides.
  assert all(len(f['within_noise']) == 5 and f['within_noise'][0].endswith(
      'fewer than 2 seeds: no interval)') for f in ablation.ordering(agg).values())
  assert 'ceiling' not in md and agg['ceilings'] == {}  # No row rather than a row of dashes.
  ablation.write_report(str(tmp_path), agg, ['ablation.py'])  # The plot copes too.
  plt.close('all')


def test_ordering_flags_seed_noise():
  def cfg(values):
    return dict(seeds=[0, 1], values={'gen/kld': values},
                mean={'gen/kld': float(np.mean(values))},
                std={'gen/kld': float(np.std(values, ddof=1))})
  agg = {'configs': {'cavp': cfg([3.0, 3.2]), 'msa': cfg([2.0, 2.2]), 'msd': cfg([2.0, 2.4]),
                     'msa_msd': cfg([1.9, 2.1])}}
  facts = ablation.ordering(agg)['gen/kld']
  assert facts['holds']
  # msa_msd 2.0 vs msa 2.1 and msd 2.2, and msd (spread 0.28) vs cavp: 95% Welch intervals of
  # the difference that hold 0; msa_msd and msa vs cavp (gaps of 1.1 and 1.0, spreads 0.14)
  # are outside the noise.
  assert [n.split(' (')[0] for n in facts['within_noise']] == [
      'msa_msd vs msd', 'msa_msd vs msa', 'msd vs cavp']
  # Welch: standard error sqrt(0.02/2 + 0.08/2) = 0.224 at 1.47 degrees of freedom, t = 6.18.
  assert facts['within_noise'][0] == 'msa_msd vs msd (Δ -0.20, 95% interval [-1.58, 1.18] holds 0)'


def test_fresh_run_command_lines(tmp_path):
  fake = FakeCommands()
  failed = ablation.run_ablation(
      str(tmp_path), ['msa'], 'runlocal', 1, overrides=['train.num_steps=7', 'config.data.fps=2'],
      eval_flags=['--sampler=ddim', '--steps=5', '--guidance=2.0'], configs_dir='cfgs',
      run_command=fake, argv=['ablation.py'])
  workdir = str(tmp_path / 'msa-runlocal-seed0')
  assert failed == 0
  assert fake.calls == [
      [sys.executable, '-m', 'gmscavp_jax.main', '--config=cfgs/msa.py:runlocal',
       f'--workdir={workdir}', '--config.seed=0', '--config.train.num_steps=7',
       '--config.data.fps=2'],
      [sys.executable, '-m', 'gmscavp_jax.evaluate', f'--workdir={workdir}', '--sampler=ddim',
       '--steps=5', '--guidance=2.0']]
  assert 'gmscavp_jax.evaluate on msa-runlocal-seed0' in (tmp_path / 'msa-runlocal-seed0.log'
                                                          ).read_text()
  # Run again: nothing left to do.
  ablation.run_ablation(str(tmp_path), ['msa'], 'runlocal', 1, ['train.num_steps=7'],
                        run_command=fake, argv=['ablation.py'])
  assert len(fake.calls) == 2
  # A longer run asked for: training resumes although results.json's step matches config.json.
  ablation.run_ablation(str(tmp_path), ['msa'], 'runlocal', 1, ['train.num_steps=9'],
                        run_command=fake, argv=['ablation.py'])
  assert [c[2] for c in fake.calls[2:]] == ['gmscavp_jax.main', 'gmscavp_jax.evaluate']


def test_full_variant_and_bad_override(tmp_path):
  fake = FakeCommands()
  ablation.run_ablation(str(tmp_path), ['cavp'], '', 1, run_command=fake, argv=['a'])
  assert fake.calls[0][3] == '--config=configs/cavp.py'
  assert fake.calls[0][4] == f'--workdir={tmp_path / "cavp-full-seed0"}'
  with pytest.raises(Exception, match='FIELD=VALUE'):
    ablation.run_ablation(str(tmp_path), ['cavp'], '', 1, ['seed=3'], run_command=fake)


def test_resume_skips_and_order(tmp_path):
  write_run(tmp_path, 'cavp', 0)  # Finished.
  write_run(tmp_path, 'msa', 0, evaluated=False)  # Trained, not evaluated.
  write_run(tmp_path, 'msd', 0, step=4, evaluated=False)  # Stopped at step 4 of 10.
  fake = FakeCommands()
  assert ablation.run_ablation(str(tmp_path), ['cavp', 'msa', 'msd'], 'runlocal', 2,
                               run_command=fake, argv=['a']) == 0
  workdirs = [next(a for a in c if a.startswith('--workdir=')) for c in fake.calls]
  done = [(c[2].split('.')[1], os.path.basename(w)) for c, w in zip(fake.calls, workdirs)]
  assert done == [('evaluate', 'msa-runlocal-seed0'),
                  ('main', 'msd-runlocal-seed0'), ('evaluate', 'msd-runlocal-seed0'),
                  ('main', 'cavp-runlocal-seed1'), ('evaluate', 'cavp-runlocal-seed1'),
                  ('main', 'msa-runlocal-seed1'), ('evaluate', 'msa-runlocal-seed1'),
                  ('main', 'msd-runlocal-seed1'), ('evaluate', 'msd-runlocal-seed1')]


def test_failure_continues_and_report_is_written(tmp_path):
  fake = FakeCommands(fail_runs={'msa-runlocal-seed0'})
  failed = ablation.run_ablation(str(tmp_path), list(CONFIGS), 'runlocal', 2,
                                 run_command=fake, argv=['ablation.py', '--seeds=2'])
  assert failed == 1
  assert len(fake.calls) == 1 + 7 * 2  # The failed training is not followed by evaluate.
  report = json.loads((tmp_path / 'ablation.json').read_text())
  assert report['configs']['msa']['seeds'] == [1]
  assert report['configs']['msd']['seeds'] == [0, 1]
  assert 'gen/kld' in report['ordering']
  assert '| msa | ✓ | ✗ | 1 |' in (tmp_path / 'ablation.md').read_text()
  png = tmp_path / 'ablation.png'
  assert png.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
  image = plt.imread(str(png))
  assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100


def test_main_exits_non_zero_on_failure(tmp_path, monkeypatch):
  from absl import flags  # pylint: disable=g-import-not-at-top
  fake = FakeCommands(fail_runs={'cavp-runlocal-seed0'})
  monkeypatch.setattr(ablation, 'run_subprocess', fake)
  flags.FLAGS(['ablation', f'--root={tmp_path}', '--configs=cavp,msa', '--seeds=1',
               '--sampler=dpmpp2m', '--override=train.num_steps=3'])
  try:
    with pytest.raises(SystemExit) as e:
      ablation.main(['ablation'])
  finally:
    flags.FLAGS.unparse_flags()
  assert e.value.code == 1
  assert fake.calls[-1][-1] == '--sampler=dpmpp2m'
  assert json.loads((tmp_path / 'msa-runlocal-seed0' / 'config.json').read_text()
                    )['train']['num_steps'] == 3


def test_comparison_table_has_one_row_of_compared_cells_per_metric():
  base = {'a': [1.0, 2.0, 3.0], 'b': [0.5, 0.6, 0.7]}
  new = {'a': [5.0, 6.5, 7.0], 'b': [0.4, 0.6, 0.9]}
  keys = [('a', 'metric a', 1), ('b', 'metric b', 2)]
  lines = runs.comparison_table(new, base, keys, 'old', 'new')
  assert lines[0] == '| metric | old | new | difference [95% Welch]; paired | seeds 0 / 1 / 2 |'
  assert lines[1] == '| --- | --- | --- | --- | --- |' and len(lines) == 4
  assert lines[2] == ('| metric a | ' + ' | '.join(runs.compared_cells(new['a'], base['a'], 1))
                      + ' | 5.0 / 6.5 / 7.0 |')
  assert lines[3].endswith(' | 0.40 / 0.60 / 0.90 |')
  short = runs.comparison_table(new, base, keys, 'old', 'new', per_seed=False)
  assert short[0].endswith('| difference [95% Welch]; paired |') and short[1].count('---') == 4


def test_compared_cells_give_means_the_welch_interval_and_the_paired_difference():
  base, new = [1.0, 2.0, 3.0], [5.0, 6.5, 7.0]
  cells = runs.compared_cells(new, base, 1)
  lo, hi = runs.difference_interval(new, base)
  assert cells[0] == '2.0 ± 1.0' and cells[1] == '6.2 ± 1.0'
  assert runs.mean_std_cell(base, 1) == cells[0]
  # Paired differences 4.0, 4.5, 4.0: mean 4.17, std 0.29; the Welch interval excludes 0 here.
  assert lo > 0 and cells[2] == f'**+4.2 [{lo:+.1f}, {hi:+.1f}]**; +4.2 ± 0.3'
  assert not runs.compared_cells([1.0, 3.0], [2.0, 2.5], 1)[2].startswith('**')
  assert cells[2].startswith(runs.difference_cell(new, base, 1) + '; ')
  assert runs.difference_cell([1.0, 3.0], [2.0, 2.5], 1).startswith('-0.2 [')
