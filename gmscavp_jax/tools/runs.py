"""Resumable queues of training and evaluation subprocesses, and what their reports share.

The ablation (ablation.py) and the studies (studies.py) are lists of `Task`s: a run directory
with its jobs (train, then evaluate), each a command line and a test of whether its output is
already there. `run_tasks` runs what is missing, one subprocess at a time with its output in
the task's log, continues past a failed task, and logs progress with an ETA; restarting the
same command resumes. The rest are what both runners share: their flags (defined when a
runner calls `define_runner_flags`, not at this module's import), workdir state, --override
parsing, mean/std, strict JSON, provenance lines.
"""

import dataclasses
import datetime
import functools
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import time
from typing import Callable, Sequence

from absl import app
from absl import flags
from absl import logging
import numpy as np
import scipy.stats

from gmscavp_jax.diffusion import samplers


@dataclasses.dataclass(frozen=True)
class RunnerFlags:
  """The flags both runners (ablation.py, studies.py) take; see `define_runner_flags`."""
  root: flags.FlagHolder
  variant: flags.FlagHolder
  override: flags.FlagHolder
  configs_dir: flags.FlagHolder
  sampler: flags.FlagHolder
  steps: flags.FlagHolder
  guidance: flags.FlagHolder


@functools.cache
def define_runner_flags() -> RunnerFlags:
  """Defines the runners' shared flags in absl's FLAGS and returns their holders.

  A runner calls it at import. absl refuses a second definition of a name and one process
  (a test worker) imports both runners, so a second call returns the first call's holders.
  """
  holders = RunnerFlags(
      root=flags.DEFINE_string('root', None, 'Directory for the runs, their logs and reports.'),
      variant=flags.DEFINE_string('variant', 'runlocal', 'Config variant (empty: full size).'),
      override=flags.DEFINE_multi_string(
          'override', [], "FIELD=VALUE for every run's training (--config.FIELD)."),
      configs_dir=flags.DEFINE_string('configs_dir', 'configs', 'Where NAME.py files live.'),
      sampler=flags.DEFINE_enum('sampler', None, list(samplers.SAMPLERS),
                                'For evaluate.'),
      steps=flags.DEFINE_integer('steps', None, 'Sampling steps, for evaluate.'),
      guidance=flags.DEFINE_float('guidance', None, 'Guidance scale, for evaluate.'))
  flags.mark_flag_as_required('root')
  return holders

# (argv, log path) -> exit status: `run_subprocess`, or a fake in tests.
RunCommand = Callable[[list, str], int]


def eval_flags(**values) -> list[str]:
  """['--NAME=VALUE'] for the evaluate flags given (None: left to evaluate's defaults), e.g.
  eval_flags(sampler='ddim', steps=None) == ['--sampler=ddim']."""
  return [f'--{name}={value}' for name, value in values.items() if value is not None]


def run_subprocess(args: list, log_path: str) -> int:
  """Runs `args` with stdout and stderr appended to `log_path`; returns the exit status."""
  with open(log_path, 'a') as log:
    log.write(f'\n$ {shlex.join(args)}\n')
    log.flush()
    return subprocess.run(args, stdout=log, stderr=subprocess.STDOUT, check=False).returncode


def read_json(path: str) -> dict | None:
  """The JSON object in `path`, or None if there is no such file."""
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def run_state(workdir: str, num_steps: int | None = None) -> tuple[bool, bool]:
  """(trained, evaluated) of a workdir; `num_steps` overrides config.json's target."""
  config, results = (read_json(os.path.join(workdir, f)) for f in ('config.json',
                                                                    'results.json'))
  if config is None or results is None:
    return False, False
  target = int(config['train']['num_steps']) if num_steps is None else num_steps
  trained = results.get('step') == target
  return trained, trained and results.get('evaluate/step') == target


def config_flags(overrides: Sequence[str], reserved: dict[str, str] | None = None
                 ) -> tuple[list, int | None]:
  """--override=FIELD=VALUE -> (['--config.FIELD=VALUE', ...], overridden train.num_steps).

  `reserved` maps fields the caller sets itself to the flag that sets them (an override of
  one is a UsageError).
  """
  out, num_steps = [], None
  for o in overrides:
    field, sep, value = o.partition('=')
    field = field.removeprefix('config.')
    if not sep or not field or field in (reserved or {}):
      why = f' ({field} is set by {reserved[field]})' if field in (reserved or {}) else ''
      raise app.UsageError(f'--override={o}: want FIELD=VALUE{why}')
    out.append(f'--config.{field}={value}')
    if field == 'train.num_steps':
      num_steps = int(value)  # Else a changed step count would look finished.
  return out, num_steps


def tail(path: str, n: int = 15) -> str:
  """The last `n` lines of a log ('' if it does not exist)."""
  if not os.path.exists(path):
    return ''
  with open(path, errors='replace') as f:
    return ''.join(f.readlines()[-n:])


def hms(seconds: float) -> str:
  """Seconds as 1h02m03s or 2m03s."""
  m, s = divmod(int(seconds), 60)
  return f'{m // 60}h{m % 60:02d}m{s:02d}s' if m >= 60 else f'{m}m{s:02d}s'


def stats(values: list) -> dict:
  """Mean and sample std (ddof=1; None below two values); NaNs become None for JSON."""
  clean = lambda x: None if x is None or not math.isfinite(x) else float(x)
  std = float(np.std(values, ddof=1)) if len(values) >= 2 else None
  return {'mean': clean(float(np.mean(values))), 'std': clean(std), 'n': len(values)}


def mean_interval(values: list, level: float = 0.95) -> tuple:
  """Student-t interval (low, high) of the mean of `values` (seeds); (None, None) below two."""
  n = len(values)
  if n < 2:
    return None, None
  half = scipy.stats.t.ppf(0.5 + level / 2, n - 1) * np.std(values, ddof=1) / math.sqrt(n)
  mean = float(np.mean(values))
  return mean - float(half), mean + float(half)


def difference_interval(a: list, b: list, level: float = 0.95) -> tuple:
  """Welch interval (low, high) of mean(a) - mean(b) over seeds; (None, None) when either
  has fewer than two values. An interval that contains 0 cannot order the two."""
  if len(a) < 2 or len(b) < 2:
    return None, None
  va, vb = np.var(a, ddof=1) / len(a), np.var(b, ddof=1) / len(b)
  diff = float(np.mean(a) - np.mean(b))
  if va + vb == 0:
    return diff, diff
  df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
  half = float(scipy.stats.t.ppf(0.5 + level / 2, df) * math.sqrt(va + vb))
  return diff - half, diff + half


def mean_std_cell(values: list, digits: int) -> str:
  """Markdown cell 'mean ± sample std' of per-seed values."""
  return f'{np.mean(values):.{digits}f} ± {np.std(values, ddof=1):.{digits}f}'


def difference_cell(new: list, base: list, digits: int) -> str:
  """Markdown cell 'mean(new) - mean(base) [95% Welch interval]', bold when it excludes 0."""
  lo, hi = difference_interval(new, base)
  d = digits
  cell = f'{np.mean(new) - np.mean(base):+.{d}f} [{lo:+.{d}f}, {hi:+.{d}f}]'
  return f'**{cell}**' if lo > 0 or hi < 0 else cell


def compared_cells(new: list, base: list, digits: int) -> list:
  """Markdown cells comparing per-seed values: [base mean ± std, new mean ± std,
  `difference_cell` and the paired difference's mean ± std (same seeds in the same order)]."""
  paired = np.asarray(new, float) - np.asarray(base, float)
  return [mean_std_cell(base, digits), mean_std_cell(new, digits),
          difference_cell(new, base, digits)
          + f'; {paired.mean():+.{digits}f} ± {paired.std(ddof=1):.{digits}f}']


# (results.json key, label, digits): the generation and retrieval rows of a run-set comparison.
COMPARED_KEYS = (
    ('gen/class_acc', 'class acc %', 1), ('gen/kld', 'KLD', 2), ('gen/fad', 'FAD', 2),
    ('gen/align_acc', 'Align Acc %', 1), ('gen/onset_f1@100ms', 'onset F1@100ms %', 1),
    ('gen/onset_precision@100ms', 'onset precision@100ms %', 1),
    ('gen/onset_recall@100ms', 'onset recall@100ms %', 1),
    ('gen/sync_offset_abs_s', 'sync offset, mean abs s', 3),
    ('retrieval/v2a_R@1', 'v2a R@1 %', 1), ('retrieval/a2v_R@1', 'a2v R@1 %', 1))


def seed_values(pattern: str, keys: Sequence[tuple] = COMPARED_KEYS, seeds: int = 3) -> dict:
  """{key: [value of seed 0, 1, ...]} read from pattern.format(seed)/results.json."""
  results = [read_json(os.path.join(pattern.format(s), 'results.json')) for s in range(seeds)]
  missing = [pattern.format(s) for s, r in enumerate(results) if r is None]
  if missing:
    raise FileNotFoundError(f'no results.json in {missing}')
  return {k: [float(r[k]) for r in results] for k, *_ in keys}


def comparison_table(new: dict, base: dict, keys: Sequence[tuple], base_label: str,
                     new_label: str, per_seed: bool = True) -> list[str]:
  """Markdown lines of a table comparing two run sets, one row per (key, label, digits) of
  `keys` over the per-seed lists new[key] and base[key]: `compared_cells`, then (per_seed)
  the new set's value of each seed."""
  head = ['metric', base_label, new_label, 'difference [95% Welch]; paired']
  if per_seed:
    head.append('seeds ' + ' / '.join(str(i) for i in range(len(new[keys[0][0]]))))
  lines = ['| ' + ' | '.join(head) + ' |', '| ' + ' | '.join('---' for _ in head) + ' |']
  for key, label, digits in keys:
    cells = compared_cells(new[key], base[key], digits)
    if per_seed:
      cells.append(' / '.join(f'{v:.{digits}f}' for v in new[key]))
    lines.append(f'| {label} | ' + ' | '.join(cells) + ' |')
  return lines


def finite(x):
  """`x` with NaN/inf floats (a diverged metric) as None, so a report is strict JSON."""
  if isinstance(x, dict):
    return {k: finite(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [finite(v) for v in x]
  return None if isinstance(x, float) and not math.isfinite(x) else x


def provenance(module: str, argv: Sequence[str]) -> list[str]:
  """Markdown list lines: the command (`python -m MODULE argv[1:]`), machine and date."""
  cmd = shlex.join(['python', '-m', module, *argv[1:]])
  cpu = platform.processor() or platform.machine()
  machine = f'{platform.node()} ({platform.platform()}, {cpu}, {os.cpu_count()} CPUs)'
  return [f'- command: `{cmd}`', f'- machine: {machine}',
          f'- date: {datetime.datetime.now().isoformat(timespec="seconds")}']


@dataclasses.dataclass
class Job:
  """One subprocess of a task: `python -m MODULE ARGS`, skipped while `done()` is true."""
  name: str
  args: list
  done: Callable[[], bool]


@dataclasses.dataclass
class Task:
  """A run directory's jobs, in order; the log of all of them goes to `log_path`."""
  name: str
  log_path: str
  jobs: list


def run_tasks(tasks: Sequence[Task], run_command: RunCommand = run_subprocess,
              after_task: Callable[[], None] | None = None,
              on_job: Callable[[Task, Job, float], None] | None = None) -> list[str]:
  """Runs each task's jobs that are not done; returns the names of the tasks that failed.

  A job fails when its subprocess exits non-zero, or exits 0 without making `done()` true;
  the task's later jobs are then skipped and the next task starts. `after_task` runs after
  every task that ran a job (e.g. to rewrite a report, so an interrupted queue leaves one);
  `on_job(task, job, seconds)` after every job that finished.
  """
  todo = sum(not all(job.done() for job in t.jobs) for t in tasks)
  start, durations, failed = time.time(), [], []
  for i, task in enumerate(tasks, 1):
    t0, did, error = time.time(), [], None
    for job in task.jobs:
      if job.done():
        continue
      logging.info('[%d/%d] %s: %s (log %s)', i, len(tasks), task.name, job.name,
                   task.log_path)
      t_job = time.time()
      code = run_command([sys.executable, '-m', *job.args], task.log_path)
      did.append(job.name)
      if code == 0 and not job.done():
        error = f'{job.name} exited 0 but its output does not show it finished'
      elif code != 0:
        error = f'{job.name} exited with status {code}'
      if error:
        break
      if on_job is not None:
        on_job(task, job, time.time() - t_job)
    if did:
      durations.append(time.time() - t0)
      todo -= 1
    if error:
      failed.append(task.name)
      logging.error('[%d/%d] %s FAILED: %s; log %s, last lines:\n%s', i, len(tasks), task.name,
                    error, task.log_path, tail(task.log_path))
    if did and after_task is not None:
      after_task()
    eta = hms(np.mean(durations) * todo) if durations else '?'
    logging.info('[%d/%d] %s: %s in %s (elapsed %s, ETA %s)', i, len(tasks), task.name,
                 '+'.join(did) + (' FAILED' if error else '') or 'already done',
                 hms(time.time() - t0), hms(time.time() - start), eta)
  if failed:
    logging.error('%d of %d tasks failed: %s', len(failed), len(tasks), ', '.join(failed))
  return failed


def write_json(path: str, obj) -> None:
  """Writes `obj` as strict JSON (non-finite floats as null), atomically."""
  with open(path + '.tmp', 'w') as f:
    json.dump(finite(obj), f, indent=2, allow_nan=False)
  os.replace(path + '.tmp', path)
