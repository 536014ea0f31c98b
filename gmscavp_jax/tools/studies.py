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

What each study's rows are is in study_rows.py, the table and plot in study_report.py.
"""

import ast
import os
import sys
from typing import Sequence

from absl import app
from absl import flags
from absl import logging

from gmscavp_jax import cli
from gmscavp_jax.tools import runs
from gmscavp_jax.tools import study_report
from gmscavp_jax.tools import study_rows

STUDIES = study_rows.STUDIES
Options = study_rows.Options  # run_study's options, what the flags below set.

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


def run_study(study: str, root: str, options: Options = _DEFAULT, *, config: str = 'msa_msd',
              variant: str = 'runlocal', seed: int = 0, overrides: Sequence[str] = (),
              eval_flags: Sequence[str] = (), out: str = 'docs/studies',
              configs_dir: str = 'configs', run_command: runs.RunCommand = runs.run_subprocess,
              argv: Sequence[str] | None = None) -> int:
  """Trains and evaluates every row of `study` not yet done, rewriting the report after each.

  `eval_flags` go to every evaluate (a sampling_steps row's own flags come after them).
  Returns the number of rows that failed.
  """
  rows, view = study_rows.study_rows(study, options)
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
                         study_report.evaluation(r, w, f, num_steps)))]
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
  report = lambda plot: study_report.write_report(
      study, rows, view, base, out, argv, runtimes, eval_flags, num_steps, plot=plot,
      title=view.get('title', f'{study}: {config}:{variant or "full"}'))
  # The table after every row (an interrupted study leaves it); the plot once at the end.
  failed = runs.run_tasks(tasks, run_command, after_task=lambda: report(False), on_job=record)
  report(True)
  return len(failed)


def main(argv):
  """Runs the study argv[1] with the flags' settings; exits 1 if a row failed."""
  if len(argv) != 2:
    raise app.UsageError(f'give one study: {" | ".join(STUDIES)} (got {argv[1:]})')
  logging.set_verbosity(logging.INFO)
  r = _RUNNER
  ints = study_rows.ints
  options = Options(
      baseline=_BASELINE.value, workdir=_WORKDIR.value, samplers=tuple(_SAMPLERS.value),
      sample_steps=tuple(ints(_SAMPLE_STEPS.value, 'sample_steps')),
      num_clips=_NUM_CLIPS.value, guidance=r.guidance.value,
      intervals=tuple(ints(_INTERVALS.value, 'intervals')), grids=tuple(_GRIDS.value),
      sizes=tuple(ints(_SIZES.value, 'sizes')), source=_SOURCE.value,
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
  cli.run(main)
