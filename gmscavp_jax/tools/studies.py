r"""The analysis studies of GMS-CAVP (papers/000 sec. 4.3), one subcommand each, resumable.

  python -m gmscavp_jax.tools.studies STUDY --root=DIR [--config=msa_msd --variant=runlocal]
      [--override=FIELD=VALUE ...] [--baseline_workdir=DIR] [--out=docs/studies]
      [--sampler=S --steps=N --guidance=G --num_clips=N]

  sampling_steps  --workdir=DIR [--samplers=ddpm,ddim,dpmpp2m --sample_steps=10,25,50,100,250]
                  one trained run evaluated at every (sampler, steps); no training.
  bidirectional   [--intervals=0,1,2,4,8]: train.bidirectional_interval (0 = off).
  spatial         [--grids=2,2,2,1,1 --grids=4,4,4,1,1]: model.scale_grids, against the
                  temporal-only pyramid of the config.
  data_scaling    [--sizes=1000,4000,16000 --source=synthetic --mixtures=SPEC ...]: the first
                  N train clips of --source (data.mixture=SOURCE[clips=N]:1), the full set,
                  and weighted mixtures of sources.

Each row is a run in ROOT/STUDY/ROW (log ROOT/STUDY/ROW.log) trained by `gmscavp_jax.main`
(seed --seed) and scored by `gmscavp_jax.evaluate`; rerunning the same command skips what is
done. The row the config itself gives (off, temporal-only, the full set) can reuse a trained
run instead, --baseline_workdir (e.g. the ablation's msa_msd seed-0 run; it must have the
study's config, seed and overrides): it is evaluated into ROOT/STUDY/ROW unless it already
holds an evaluation with the study's settings. After every row the table is rewritten,
OUT/STUDY.md (with the command and runtimes) and ROOT/STUDY/study.json; OUT/STUDY.png at the
end of the command (rerunning a finished study redraws it in seconds).
"""

import ast
import dataclasses
import os
import re
import sys
from typing import Sequence

from absl import app
from absl import flags
from absl import logging

from gmscavp_jax.diffusion import samplers as samplers_lib
from gmscavp_jax.infra import plotting
from gmscavp_jax.tools import runs
from gmscavp_jax.data import mixture
from gmscavp_jax.evaluators import suite

STUDIES = ('sampling_steps', 'bidirectional', 'spatial', 'data_scaling')


@dataclasses.dataclass
class Options:
  """What the studies' flags set (defaults = the flags' defaults)."""
  baseline: str | None = None  # A trained run reused as the row the config itself gives.
  workdir: str | None = None  # sampling_steps: the trained run.
  samplers: tuple = samplers_lib.DIFFUSION_SAMPLERS  # euler,heun for a flow run.
  sample_steps: tuple = (10, 25, 50, 100, 250)
  num_clips: int | None = None  # Test videos to generate for (sampling_steps: 64 if None).
  guidance: float | None = None
  intervals: tuple = (0, 1, 2, 4, 8)
  grids: tuple = ('2,2,2,1,1', '4,4,4,1,1')
  sizes: tuple = (1000, 4000, 16000)
  source: str = 'synthetic'
  mixtures: tuple = ('synthetic[clips=4000]:0.5,synthetic[seed=1,clips=16000]:0.5',)


_DEFAULT = Options()
# --root, --variant, --override, --configs_dir, --sampler, --steps, --guidance.
_RUNNER = runs.define_runner_flags()
_OUT = flags.DEFINE_string('out', 'docs/studies', 'Where STUDY.md and STUDY.png go.')
_CONFIG = flags.DEFINE_string('config', 'msa_msd', 'Experiment file CONFIGS_DIR/NAME.py.')
_SEED = flags.DEFINE_integer('seed', 0, 'Training seed of every row.')
_BASELINE = flags.DEFINE_string('baseline_workdir', None,
                                'A trained run to reuse as the row the config itself gives.')
_NUM_CLIPS = flags.DEFINE_integer('num_clips', None, 'Test videos to generate for '
                                  '(sampling_steps: 64 unless given).')
_WORKDIR = flags.DEFINE_string('workdir', None, 'sampling_steps: the trained run to sample.')
_SAMPLERS = flags.DEFINE_list('samplers', list(_DEFAULT.samplers), 'sampling_steps.')
_SAMPLE_STEPS = flags.DEFINE_list('sample_steps', list(map(str, _DEFAULT.sample_steps)),
                                  'sampling_steps: step counts.')
_INTERVALS = flags.DEFINE_list('intervals', list(map(str, _DEFAULT.intervals)),
                               'bidirectional: train.bidirectional_interval values (0 = off).')
_GRIDS = flags.DEFINE_multi_string('grids', list(_DEFAULT.grids),
                                   'spatial: model.scale_grids of a row (one per scale).')
_SIZES = flags.DEFINE_list('sizes', list(map(str, _DEFAULT.sizes)), 'data_scaling: train clips.')
_SOURCE = flags.DEFINE_string('source', _DEFAULT.source,
                              'data_scaling: the dataset the sizes take from, NAME[OPTIONS].')
_MIXTURES = flags.DEFINE_multi_string('mixtures', list(_DEFAULT.mixtures),
                                      'data_scaling: data.mixture specs, one row each.')

# Table columns of the studies that train (ablation's), and of sampling_steps (no retrieval:
# one checkpoint), which adds the latency.
TRAINED_METRICS = tuple(m for m in suite.METRICS if m[0] in suite.PLOT_METRICS)
SAMPLING_METRICS = tuple(m for m in TRAINED_METRICS if m[0].startswith('gen/')) + (
    ('gen/seconds_per_clip', 's / clip ↓', True, 3),)
# Audio-to-video columns (gen_a2v/..., where a run trained the a2v denoiser): each score
# beside its control, the same score against another clip (what ignoring the audio gets).
# The onset tolerance is one frame period, so its key depends on data.fps.
A2V_COLUMNS = ((r'psnr', 'a2v PSNR'), (r'psnr_shuffled', 'a2v PSNR, shuffled'),
               (r'onset_f1(@\d+ms)', 'a2v onset F1{}'),
               (r'onset_f1(@\d+ms)_shuffled', 'a2v onset F1{}, shuffled'),
               (r'onset_hit(@\d+ms)', 'a2v onset recall{}'),
               (r'onset_hit(@\d+ms)_shuffled', 'a2v onset recall{}, shuffled'))


def a2v_metrics(results: dict) -> list:
  """(key, label, lower_is_better, decimals) of the A2V_COLUMNS some row's results have."""
  keys = sorted({k for res in results.values() if res for k in res
                 if k.startswith('gen_a2v/') and isinstance(res[k], (int, float))})
  out = []
  for pattern, label in A2V_COLUMNS:
    for key in keys:
      match = re.fullmatch('gen_a2v/' + pattern, key)
      if match:
        out.append((key, label.format(*match.groups()) + ' ↑', False, 1))
  return out


@dataclasses.dataclass
class Row:
  """One setting of a study: its run directory name, label, plot position and series, the
  training overrides (--config.F=V), evaluate flags, and a trained run to reuse, if any.
  `x_field` (a config.json path) gives the plot position once the run exists."""
  name: str
  label: str
  x: float
  series: str
  overrides: list = dataclasses.field(default_factory=list)
  eval_flags: list = dataclasses.field(default_factory=list)
  reuse: str | None = None
  x_field: str | None = None


def study_rows(study: str, o: Options) -> tuple[list[Row], dict]:
  """The rows of `study`, and how to draw them: {'xlabel', 'log_x', 'xticks', 'metrics',
  'about'}."""
  if study == 'sampling_steps':
    if not o.workdir:
      raise app.UsageError('sampling_steps needs --workdir, a trained run')
    fixed = [f'--num_clips={o.num_clips or 64}'] + (
        [f'--guidance={o.guidance}'] if o.guidance is not None else [])
    rows = [Row(f'{s}-{n}', f'{s}, {n} steps', n, s,
                eval_flags=[f'--sampler={s}', f'--steps={n}', *fixed], reuse=o.workdir)
            for s in o.samplers for n in o.sample_steps]
    return rows, dict(xlabel='sampling steps', log_x=True, xticks=None, metrics=SAMPLING_METRICS,
                      title=f'sampling_steps: {o.workdir}',
                      about='One trained run sampled by each sampler at each step count; '
                      's / clip is the sampling time per clip at eval.batch_size clips a '
                      'batch, after compiling.')
  if study == 'bidirectional':
    rows = [Row(f'interval{k}', 'off' if k == 0 else f'every {k}', i, 'bidirectional',
                overrides=[] if k == 0 else [f'--config.train.bidirectional_interval={k}'],
                reuse=o.baseline if k == 0 else None) for i, k in enumerate(o.intervals)]
    return rows, dict(xlabel='train.bidirectional_interval', log_x=False,
                      xticks=[(r.x, r.label) for r in rows], metrics=TRAINED_METRICS,
                      about='Audio-to-video diffusion trained beside video-to-audio every K '
                      'steps (CMMD bidirectional training); off is the config as it is.')
  if study == 'spatial':
    rows = [Row('temporal', 'temporal only (config)', 0, 'spatial', reuse=o.baseline)]
    for i, grids in enumerate(o.grids, 1):
      grid = tuple(_ints(grids.split(','), 'grids'))
      rows.append(Row('grids' + '-'.join(map(str, grid)), f'grids {grid}', i, 'spatial',
                      overrides=[f'--config.model.scale_grids={grid}']))
    return rows, dict(xlabel='model.scale_grids', log_x=False,
                      xticks=[(r.x, r.label.replace('grids ', '')) for r in rows],
                      metrics=TRAINED_METRICS,
                      about='Spatial grids g_l x g_l at the fine scales (the UNet cross-attends '
                      'to T_l * g_l^2 tokens) against the temporal-only pyramid.')
  if study == 'data_scaling':
    try:
      (source,) = mixture.parse(o.source)
    except ValueError as e:
      raise app.UsageError(f'--source={o.source}: one dataset, NAME[OPTIONS] ({e})') from e
    sized = lambda n: dataclasses.replace(source, clips=n, weight=1.0).spec()
    rows = [Row(f'clips{n}', f'{n} clips', n, source.name,
                overrides=[f'--config.data.mixture={sized(n)}']) for n in o.sizes]
    plain = source == mixture.Entry('synthetic')
    rows.append(Row('full', 'full train set (config)', 0, source.name,
                    overrides=[] if plain else [f'--config.data.mixture={source.spec()}'],
                    reuse=o.baseline, x_field='data.num_train_clips' if plain else None))
    for i, spec in enumerate(o.mixtures):
      try:
        entries = mixture.parse(spec)
      except ValueError as e:
        raise app.UsageError(f'--mixtures={spec}: {e}') from e
      total = sum(e.clips for e in entries) if all(e.clips for e in entries) else 0
      rows.append(Row(f'mixture{i}', f'mixture {spec}', total, f'mixture {spec}',
                      overrides=[f'--config.data.mixture={spec}']))
    return rows, dict(xlabel='training clips', log_x=True, xticks=None,
                      metrics=TRAINED_METRICS,
                      about='The first N train clips of the source (data.mixture with clips=N: '
                      'the evaluator networks stay those of the full set), the full set, and '
                      'mixtures of sources by weight (grain MapDataset.mix).')
  raise app.UsageError(f'unknown study {study!r}; expected one of {", ".join(STUDIES)}')


def _ints(values: Sequence[str], flag: str) -> list[int]:
  try:
    return [int(v) for v in values]
  except ValueError as e:
    raise app.UsageError(f'--{flag}={",".join(values)}: expected integers') from e


def _value(text: str):
  """An override's value as config.json would hold it (tuples as lists)."""
  if text.lower() in ('true', 'false'):
    return text.lower() == 'true'
  try:
    value = ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text
  return list(value) if isinstance(value, tuple) else value


def check_reused(workdir: str, config_name: str, seed: int, config_args: Sequence[str]) -> None:
  """UsageError unless `workdir` is a run of `config_name` at `seed` with these overrides."""
  config = runs.read_json(os.path.join(workdir, 'config.json'))
  if config is None:
    raise app.UsageError(f'{workdir}/config.json not found: not a training run')
  wrong = []
  if config.get('experiment') != config_name:
    wrong.append(f'experiment {config.get("experiment")!r} (want {config_name!r})')
  if config.get('seed') != seed:
    wrong.append(f'seed {config.get("seed")} (want {seed})')
  for arg in config_args:
    field, _, value = arg.removeprefix('--config.').partition('=')
    node = config
    for part in field.split('.'):
      node = node.get(part) if isinstance(node, dict) else None
    if node != _value(value):
      wrong.append(f'{field}={node!r} (want {value})')
  if wrong:
    raise app.UsageError(f'cannot reuse {workdir} as this study\'s baseline: ' +
                         '; '.join(wrong))


def _expected_settings(train_dir: str, eval_flags: Sequence[str]) -> dict:
  """The results.json values an evaluation with `eval_flags` of this run writes."""
  config = runs.read_json(os.path.join(train_dir, 'config.json')) or {}
  e = config.get('eval', {})
  flag = dict(f[2:].split('=', 1) for f in eval_flags)
  return {'evaluate/sampler': flag.get('sampler', e.get('sampler')),
          'evaluate/sample_steps': int(flag.get('steps', e.get('sample_steps', 0))),
          'evaluate/guidance': float(flag.get('guidance', e.get('guidance', 0.0))),
          'gen/num_clips': float(flag.get('num_clips', e.get('num_metric_clips', 0)))}


def evaluation(row_dir: str, train_dir: str, eval_flags: Sequence[str],
               num_steps: int | None) -> dict | None:
  """The results of the row's evaluation at the trained step with its settings, or None.

  Looked for in the row's directory, then in the trained run's own (a reused run may hold it).
  """
  trained, _ = runs.run_state(train_dir, num_steps)
  if not trained:
    return None
  step = runs.read_json(os.path.join(train_dir, 'results.json'))['step']
  expected = _expected_settings(train_dir, eval_flags)
  for d in dict.fromkeys((row_dir, train_dir)):
    results = runs.read_json(os.path.join(d, 'results.json')) or {}
    if results.get('evaluate/step') == step and all(
        results.get(k) == v for k, v in expected.items()):
      return results
  return None


def run_study(study: str, root: str, options: Options = _DEFAULT, *, config: str = 'msa_msd',
              variant: str = 'runlocal', seed: int = 0, overrides: Sequence[str] = (),
              eval_flags: Sequence[str] = (), out: str = 'docs/studies',
              configs_dir: str = 'configs', run_command: runs.RunCommand = runs.run_subprocess,
              argv: Sequence[str] | None = None) -> int:
  """Trains and evaluates every row of `study` not yet done, rewriting the report after each.

  `eval_flags` go to every evaluate (a sampling_steps row's own flags come after them).
  Returns the number of rows that failed.
  """
  rows, view = study_rows(study, options)
  base = os.path.join(root, study)
  os.makedirs(base, exist_ok=True)
  config_args, num_steps = runs.config_flags(overrides, reserved={'seed': '--seed'})
  config_file = os.path.join(configs_dir, f'{config}.py') + (f':{variant}' if variant else '')
  for row in rows:
    if row.reuse and row.reuse == options.baseline:
      check_reused(row.reuse, config, seed, [*config_args, *row.overrides])
    if row.reuse and not runs.run_state(row.reuse, num_steps)[0]:
      raise app.UsageError(f'{row.reuse} is not a run trained to its last step '
                           f'({num_steps or "its config"}): finish it first')
  runtimes_path = os.path.join(base, 'runtimes.json')
  runtimes = runs.read_json(runtimes_path) or {}
  tasks = []
  for row in rows:
    row_dir = os.path.join(base, row.name)
    train_dir = row.reuse or row_dir
    row_flags = [*eval_flags, *row.eval_flags]
    jobs = [runs.Job('evaluate', ['gmscavp_jax.evaluate', f'--workdir={train_dir}', *row_flags]
                     + ([f'--output_dir={row_dir}'] if row.reuse else []),
                     lambda r=row_dir, w=train_dir, f=row_flags: bool(
                         evaluation(r, w, f, num_steps)))]
    if not row.reuse:
      jobs.insert(0, runs.Job('train', [
          'gmscavp_jax.main', f'--config={config_file}', f'--workdir={row_dir}',
          f'--config.seed={seed}', *config_args, *row.overrides],
                              lambda w=row_dir: runs.run_state(w, num_steps)[0]))
    tasks.append(runs.Task(row.name, os.path.join(base, f'{row.name}.log'), jobs))

  def record(task, job, seconds):
    runtimes.setdefault(task.name, {})[job.name] = seconds
    runs.write_json(runtimes_path, runtimes)

  argv = list(sys.argv if argv is None else argv)
  report = lambda plot: write_report(study, rows, view, base, out, argv, runtimes, eval_flags,
                                     num_steps, plot=plot,
                                     title=view.get('title',
                                                    f'{study}: {config}:{variant or "full"}'))
  # The table after every row (an interrupted study leaves it); the plot once at the end.
  failed = runs.run_tasks(tasks, run_command, after_task=lambda: report(False), on_job=record)
  report(True)
  return len(failed)


def _cell(value, decimals: int) -> str:
  return '—' if value is None else f'{value:.{decimals}f}'


def write_report(study: str, rows: Sequence[Row], view: dict, base: str, out: str,
                 argv: Sequence[str], runtimes: dict, eval_flags: Sequence[str],
                 num_steps: int | None, plot: bool = True, title: str = '') -> None:
  """OUT/STUDY.md (table, command, runtimes), BASE/study.json and (`plot`) OUT/STUDY.png."""
  results = {r.name: evaluation(os.path.join(base, r.name), r.reuse or os.path.join(
      base, r.name), [*eval_flags, *r.eval_flags], num_steps) for r in rows}
  metrics = list(view['metrics'])
  # Right after the retrieval columns, the timing-blind ceilings of each row's test clips (a
  # row on other data has other ones); tabulated, not plotted.
  retrieval = [i for i, m in enumerate(metrics) if m[0].startswith('retrieval/')]
  columns = list(metrics)
  if retrieval:
    columns[retrieval[-1] + 1:retrieval[-1] + 1] = [
        (f'{prefix}_R@1', f'{label} R@1', False, 1) for prefix, label in suite.CEILINGS]
  a2v = a2v_metrics(results)
  metrics += a2v
  columns += a2v
  time_of = lambda r, job: runtimes.get(r.name, {}).get(job)
  lines = [f'# Study: {study}', '', view['about'], '', *runs.provenance('gmscavp_jax.tools.studies',
                                                                         argv),
           f'- trainings: {sum(not r.reuse for r in rows)} (rows reusing a trained run: '
           f'{sum(bool(r.reuse) for r in rows)}); evaluations: {len(rows)}',
           f'- runtime so far: {runs.hms(sum(sum(t.values()) for t in runtimes.values()))} '
           f'(this study\'s subprocesses, resumed sessions included)', '',
           '| setting | ' + ' | '.join(m[1] for m in columns) + ' | train | evaluate |',
           '|' + ' --- |' * (len(columns) + 3)]
  for r in rows:
    res = results[r.name] or {}
    train = 'reused' if r.reuse else (runs.hms(time_of(r, 'train'))
                                      if time_of(r, 'train') else '—')
    evaluate = time_of(r, 'evaluate') or res.get('evaluate/seconds')
    lines.append(f'| {r.label} | ' + ' | '.join(_cell(res.get(k), d) for k, _, _, d in columns)
                 + f' | {train} | {runs.hms(evaluate) if evaluate else "—"} |')
  lines += ['', f'Runs, logs and study.json: `{base}`.', '']
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, f'{study}.md'), 'w') as f:
    f.write('\n'.join(lines))
  runs.write_json(os.path.join(base, 'study.json'), {
      'study': study, 'rows': [{**dataclasses.asdict(r), 'results': results[r.name]}
                               for r in rows]})
  logging.info('wrote %s/%s.md and %s/study.json', out, study, base)
  if not plot:
    return
  series = {}
  for r in rows:
    x = r.x
    if r.x_field:  # E.g. the full set's size, from the run's own config.
      config = runs.read_json(os.path.join(r.reuse or os.path.join(base, r.name),
                                           'config.json')) or {}
      for part in r.x_field.split('.'):
        config = config.get(part, {}) if isinstance(config, dict) else {}
      x = config if isinstance(config, (int, float)) else 0
    if results[r.name] and (x or not view['log_x']):
      series.setdefault(r.series, []).append((x, results[r.name]))
  if series:
    plotting.study_lines(series, os.path.join(out, f'{study}.png'),
                         [(k, label, lower) for k, label, lower, _ in metrics],
                         view['xlabel'], log_x=view['log_x'], xticks=view['xticks'],
                         title=title)
    logging.info('wrote %s/%s.png', out, study)


def main(argv):
  if len(argv) != 2:
    raise app.UsageError(f'give one study: {" | ".join(STUDIES)} (got {argv[1:]})')
  logging.set_verbosity(logging.INFO)
  r = _RUNNER
  options = Options(
      baseline=_BASELINE.value, workdir=_WORKDIR.value, samplers=tuple(_SAMPLERS.value),
      sample_steps=tuple(_ints(_SAMPLE_STEPS.value, 'sample_steps')),
      num_clips=_NUM_CLIPS.value, guidance=r.guidance.value,
      intervals=tuple(_ints(_INTERVALS.value, 'intervals')), grids=tuple(_GRIDS.value),
      sizes=tuple(_ints(_SIZES.value, 'sizes')), source=_SOURCE.value,
      mixtures=tuple(_MIXTURES.value))
  eval_flags = [] if argv[1] == 'sampling_steps' else runs.eval_flags(  # Rows set their own.
      sampler=r.sampler.value, steps=r.steps.value, guidance=r.guidance.value,
      num_clips=_NUM_CLIPS.value)
  failed = run_study(argv[1], r.root.value, options, config=_CONFIG.value,
                     variant=r.variant.value, seed=_SEED.value, overrides=r.override.value,
                     eval_flags=eval_flags, out=_OUT.value, configs_dir=r.configs_dir.value,
                     run_command=runs.run_subprocess)
  if failed:
    sys.exit(1)


if __name__ == '__main__':
  app.run(main)
