r"""Table 3 of the paper: trains and evaluates each config for several seeds, then tabulates.

  python -m gmscavp_jax.tools.ablation --root=/tmp/ablation --seeds=3 \
      [--configs=cavp,msa,msd,msa_msd] [--variant=runlocal] [--override=train.num_steps=500] \
      [--sampler=ddim --steps=50 --guidance=3]

Runs go seed-major (seed 0 of every config, then seed 1, ...), one subprocess at a time, into
ROOT/{config}-{variant}-seed{S} with logs in ROOT/{run}.log. Restarting the same command
resumes: finished runs are skipped, unfinished ones continue from their checkpoints. At the end
it writes ROOT/ablation.json, ROOT/ablation.md (Table 3 layout) and ROOT/ablation.png. How long
a runlocal ablation takes on a CPU is recorded in docs/results.md.
"""

import json
import os
import sys
from typing import Sequence

from absl import app
from absl import flags
from absl import logging

from gmscavp_jax import cli
from gmscavp_jax.infra import plotting
from gmscavp_jax.tools import runs
from gmscavp_jax.evaluators import suite

# --root, --variant, --override, --configs_dir, --sampler, --steps, --guidance.
_RUNNER = runs.define_runner_flags()
_CONFIGS = flags.DEFINE_list('configs', ['cavp', 'msa', 'msd', 'msa_msd'],
                             'Experiment files CONFIGS_DIR/NAME.py to run.')
_SEEDS = flags.DEFINE_integer('seeds', 3, 'Seeds 0..N-1 per config.', lower_bound=1)

METRICS, PLOT_METRICS = suite.METRICS, suite.PLOT_METRICS
TABLE3 = tuple(suite.TABLE3_FLAGS)  # The paper's four configs, neither to both.

# The default command runner (tests replace it through this name).
run_subprocess = runs.run_subprocess


def run_name(name: str, variant: str, seed: int) -> str:
  return f'{name}-{variant or "full"}-seed{seed}'


def run_ablation(root: str, configs: Sequence[str], variant: str = 'runlocal', seeds: int = 3,
                 overrides: Sequence[str] = (), eval_flags: Sequence[str] = (),
                 configs_dir: str = 'configs', run_command: runs.RunCommand = run_subprocess,
                 argv: Sequence[str] | None = None) -> int:
  """Trains and evaluates every (seed, config) not yet done, rewriting the report after each.

  Returns the number of runs that failed (their subprocess exited non-zero or stopped short).
  """
  os.makedirs(root, exist_ok=True)
  config_args, num_steps = runs.config_flags(overrides, reserved={'seed': '--seeds'})
  tasks = []
  for seed in range(seeds):
    for name in configs:
      run = run_name(name, variant, seed)
      workdir = os.path.join(root, run)
      config = os.path.join(configs_dir, f'{name}.py') + (f':{variant}' if variant else '')
      state = lambda i, w=workdir: runs.run_state(w, num_steps)[i]
      tasks.append(runs.Task(run, os.path.join(root, f'{run}.log'), [
          runs.Job('train', ['gmscavp_jax.main', f'--config={config}', f'--workdir={workdir}',
                             f'--config.seed={seed}', *config_args], lambda s=state: s(0)),
          runs.Job('evaluate', ['gmscavp_jax.evaluate', f'--workdir={workdir}', *eval_flags],
                   lambda s=state: s(1))]))
  argv = list(sys.argv if argv is None else argv)
  report = lambda: write_report(root, aggregate(root, configs, seeds, variant), argv)
  failed = runs.run_tasks(tasks, run_command, after_task=report)
  report()
  return len(failed)


def aggregate(root: str, configs: Sequence[str], seeds: int, variant: str = 'runlocal') -> dict:
  """Per-run values and per-config mean/std of every metric, over runs evaluated at the end.

  Returns {'runs': {run: {'config', 'seed', 'results'}}, 'configs': {name: {'seeds': [S],
  'values': {key: [per seed]}, 'mean': {key: x}, 'std': {key: x or None}}}, 'ref': {'gt' |
  'vocoded' | 'shuffled': {metric key: mean over the runs that have it}}, 'chance_R@1': mean
  or None, 'ceilings': {'retrieval/ceiling_R@k' | 'retrieval/class_ceiling_R@k': mean over the
  runs that have it}}.
  """
  out = {'runs': {}, 'configs': {}, 'ref': {'gt': {}, 'vocoded': {}, 'shuffled': {}},
         'chance_R@1': None, 'ceilings': {}}
  refs, chance, ceilings = {}, [], {}
  for name in configs:
    seeds_done, values = [], {}
    for seed in range(seeds):
      workdir = os.path.join(root, run_name(name, variant, seed))
      if not runs.run_state(workdir)[1]:
        continue
      results = runs.read_json(os.path.join(workdir, 'results.json'))
      out['runs'][run_name(name, variant, seed)] = dict(config=name, seed=seed, results=results)
      seeds_done.append(seed)
      for key, _, _, _ in METRICS:
        if key in results:
          values.setdefault(key, []).append(float(results[key]))
      for key, v in results.items():
        if key.startswith(('ref/gt/', 'ref/vocoded/', 'ref/shuffled/')):
          refs.setdefault(key, []).append(float(v))
      if 'retrieval/chance_R@1' in results:
        chance.append(float(results['retrieval/chance_R@1']))
      for key, v in results.items():
        if key.startswith(tuple(f'{prefix}_R@' for prefix, _ in suite.CEILINGS)):
          ceilings.setdefault(key, []).append(float(v))
    if seeds_done:
      stats = {k: runs.stats(v) for k, v in values.items()}
      out['configs'][name] = dict(seeds=seeds_done, values=values,
                                  mean={k: s['mean'] for k, s in stats.items()},
                                  std={k: s['std'] for k, s in stats.items()},
                                  ci95={k: runs.mean_interval(v) for k, v in values.items()})
  for key, v in refs.items():
    _, kind, metric = key.split('/', 2)
    out['ref'][kind][f'gen/{metric}'] = runs.stats(v)['mean']
  out['chance_R@1'] = runs.stats(chance)['mean'] if chance else None
  # The same test clips in every run (data.seed fixes them), so the mean is each run's value.
  out['ceilings'] = {k: runs.stats(v)['mean'] for k, v in sorted(ceilings.items())}
  return out


def ordering(agg: dict) -> dict:
  """Per metric: does "both > each alone > neither" hold on the means? None unless all 4 ran.

  Returns {key: {'holds': bool, 'violations': [str], 'within_noise': [str]}}; a comparison is
  within seed noise when the 95% Welch interval of the difference of the two configs' means
  over seeds contains 0 (`runs.difference_interval`).
  """
  cfg = agg['configs']
  if not all(c in cfg for c in TABLE3):
    return {}
  out = {}
  pairs = [('msa_msd', c) for c in ('msd', 'msa', 'cavp')] + [('msa', 'cavp'), ('msd', 'cavp')]
  for key, _, lower, dec in METRICS:
    if not all(cfg[c]['mean'].get(key) is not None for c in TABLE3):
      continue
    violations, noise = [], []
    for a, b in pairs:  # Claim: `a` is better than `b`.
      ma, mb = cfg[a]['mean'][key], cfg[b]['mean'][key]
      if not (ma < mb if lower else ma > mb):
        op = '=' if ma == mb else ('<' if mb < ma else '>')
        violations.append(f'{b} {mb:.{dec}f} {op} {a} {ma:.{dec}f}')
      low, high = runs.difference_interval(cfg[a]['values'][key], cfg[b]['values'][key])
      if low is None:  # One seed: nothing tells the difference from seed noise.
        noise.append(f'{a} vs {b} (Δ {ma - mb:.{dec}f}, fewer than 2 seeds: no interval)')
      elif low <= 0 <= high:
        noise.append(f'{a} vs {b} (Δ {ma - mb:.{dec}f}, 95% interval '
                     f'[{low:.{dec}f}, {high:.{dec}f}] holds 0)')
    out[key] = dict(holds=not violations, violations=violations, within_noise=noise)
  return out


def _cell(mean, std, dec, interval=(None, None)) -> str:
  """mean ± std [95% interval of the mean over seeds], each part where there is one."""
  if mean is None:
    return '—'
  text = f'{mean:.{dec}f}' + ('' if std is None else f' ± {std:.{dec}f}')
  low, high = interval
  return text + ('' if low is None else f' [{low:.{dec}f}, {high:.{dec}f}]')


def markdown(agg: dict, argv: Sequence[str]) -> str:
  """ablation.md: provenance, the Table 3 layout, and the paper's ordering checked per metric."""
  lines = ['# GMS-CAVP ablation (Table 3)', '',
           *runs.provenance('gmscavp_jax.tools.ablation', argv),
           '',
           '| config | MSA | MSD | seeds | ' + ' | '.join(m[1] for m in METRICS) + ' |',
           '|' + ' --- |' * (4 + len(METRICS))]
  mark = lambda b: '✓' if b else '✗'
  for name, c in agg['configs'].items():
    components = suite.TABLE3_FLAGS.get(name)
    msa, msd = (mark(b) for b in components) if components else ('?', '?')
    cells = [_cell(c['mean'].get(k), c['std'].get(k), d,
                   c.get('ci95', {}).get(k, (None, None))) for k, _, _, d in METRICS]
    lines.append(f'| {name} | {msa} | {msd} | {len(c["seeds"])} | ' + ' | '.join(cells) + ' |')
  for kind, label in (('gt', 'ground-truth audio'), ('vocoded', 'ground truth through the vocoder'),
                      ('shuffled', 'shuffled ground-truth audio')):
    if agg['ref'][kind]:
      cells = [_cell(agg['ref'][kind].get(k), None, d) for k, _, _, d in METRICS]
      lines.append(f'| {label} | — | — | — | ' + ' | '.join(cells) + ' |')
  if agg['chance_R@1'] is not None:
    cells = [_cell(agg['chance_R@1'], None, d) if k.endswith('_R@1') else '—'
             for k, _, _, d in METRICS]
    lines.append('| chance | — | — | — | ' + ' | '.join(cells) + ' |')
  for prefix, label in suite.CEILINGS:
    # One value serves both directions: a retrieval column R@k shows the ceiling's R@k.
    if f'{prefix}_R@1' in agg.get('ceilings', {}):
      cells = [_cell(agg['ceilings'].get(f"{prefix}_R@{k.rsplit('_R@', 1)[1]}"), None, d)
               if k.startswith('retrieval/') else '—' for k, _, _, d in METRICS]
      lines.append(f'| {label} | — | — | — | ' + ' | '.join(cells) + ' |')
  facts = ordering(agg)
  if facts:
    lines += ['', "## Does the paper's ordering hold?", '',
              'The paper claims both components > each alone > neither: msa_msd best of the '
              'four, and msa and msd each better than cavp. Checked on the means:', '']
    for key, label, _, _ in METRICS:
      if key in facts:
        f = facts[key]
        line = f'- {label[:-2] if label[-1] in "↓↑" else label}: ' + (
            'holds' if f['holds'] else f'does not hold ({"; ".join(f["violations"])})')
        if f['within_noise']:
          line += '; within seed noise: ' + '; '.join(f['within_noise'])
        lines.append(line)
    lines += ['', 'Cells: mean ± sample std over seeds [95% Student-t interval of the mean]. '
              'A comparison whose 95% Welch interval of the difference of means holds 0 is '
              'within seed noise: it is flagged and decides nothing.']
  return '\n'.join(lines) + '\n'


def write_report(root: str, agg: dict, argv: Sequence[str]) -> None:
  """ROOT/ablation.json, ablation.md and (when any run has results) ablation.png."""
  with open(os.path.join(root, 'ablation.json'), 'w') as f:
    json.dump(runs.finite({**agg, 'ordering': ordering(agg)}), f, indent=2, allow_nan=False)
  with open(os.path.join(root, 'ablation.md'), 'w') as f:
    f.write(markdown(agg, argv))
  if agg['configs']:
    metrics = [(k, label, lower) for k, label, lower, _ in METRICS if k in PLOT_METRICS]
    plotting.ablation_bars(agg, os.path.join(root, 'ablation.png'), metrics)
  logging.info('wrote %s/ablation.{json,md,png}', root)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  logging.set_verbosity(logging.INFO)
  r = _RUNNER
  eval_flags = runs.eval_flags(sampler=r.sampler.value, steps=r.steps.value,
                               guidance=r.guidance.value)
  failed = run_ablation(r.root.value, _CONFIGS.value, r.variant.value, _SEEDS.value,
                        r.override.value, eval_flags, r.configs_dir.value,
                        run_command=run_subprocess)
  if failed:
    sys.exit(1)


if __name__ == '__main__':
  cli.run(main)
