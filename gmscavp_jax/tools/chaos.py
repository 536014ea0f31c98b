"""Chaos harness: a job killed at random moments and restarted each time must end exactly where
the same job run once without interruption ends.

  python -m gmscavp_jax.tools.chaos --config=configs/msa_msd.py:runlocal --root=/tmp/chaos \
      --kills=20 --signals=KILL,TERM --override=train.num_steps=400 \
      --override=train.checkpoint_every_steps=40
  python -m gmscavp_jax.tools.chaos --job=prepare --config=configs/msa.py:runlocal \
      --root=/tmp/chaos_prepare --kills=10 --signals=KILL

It runs the job uninterrupted once (ROOT/reference, reused when already finished), then for
each signal again in ROOT/chaos_SIG: start, wait a random time, send the signal, restart,
`--kills` times, then let it finish. Each wait is drawn uniformly over the life the process
would still have (start-up and compile included), cut into a share per remaining kill, so the
kills spread over the whole run: start-up, compile, training steps, inside an async checkpoint
save, right after one, the periodic and the final evaluation. SIGKILL goes to the job's whole
process group (a lost machine); SIGTERM to its main process (a preemption notice: the trainer
saves and exits 143). A run that ends before its next kill is compared and started again
from nothing, so every kill lands in a live process.

Afterwards it compares (tools/chaos_runs.py): training's final state bit for bit, metrics
rows and results.json outside timing fields; prepare's records field by field, in order, and
its other files byte for byte. It prints a
table per signal (kill moment, step reached, restore step, outcome) and writes
ROOT/chaos_report.json and .md. A benchmark, not a test: at the command above, 20 kills per
signal take about half an hour on 2 CPU cores.
"""

import importlib.util
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time

from absl import app
from absl import flags
from absl import logging

from gmscavp_jax import cli
from gmscavp_jax.data.prepare import render
from gmscavp_jax.infra import metrics_io
from gmscavp_jax.tools import chaos_runs

_JOB = flags.DEFINE_enum('job', 'train', ['train', 'prepare'], 'What to kill: training '
                         '(gmscavp_jax.main) or dataset preparation (gmscavp_jax.prepare).')
_CONFIG = flags.DEFINE_string('config', 'configs/msa_msd.py:runlocal', 'Config file[:variant].')
_ROOT = flags.DEFINE_string('root', None, 'Folder for the reference and the killed runs.')
_KILLS = flags.DEFINE_integer('kills', 20, 'Kills per signal before the run may finish.')
_SIGNALS = flags.DEFINE_list('signals', ['KILL', 'TERM'], 'Signals to test, each a run.')
_OVERRIDES = flags.DEFINE_multi_string('override', [], 'FIELD=VALUE for the job (--config.*).')
_SEED = flags.DEFINE_integer('seed', 0, 'Seed of the kill moments.')
_CLIPS = flags.DEFINE_integer('prepare_clips', 96, 'prepare: synthetic clips rendered as mp4.')
_BUILD_KILLS = flags.DEFINE_integer('prepare_build_kills', 0, 'prepare: how many of the kills '
                                    'wait for the ArrayRecord shard build to start.')
flags.mark_flags_as_required(['root'])

def _train_command(workdir: str) -> list[str]:
  return [sys.executable, '-m', 'gmscavp_jax.main', f'--config={_CONFIG.value}',
          f'--workdir={workdir}', *[f'--config.{o}' for o in _OVERRIDES.value]]


def _prepare_command(videos: str, out: str) -> list[str]:
  return [sys.executable, '-m', 'gmscavp_jax.prepare', '--layout=vggsound',
          f'--videos={os.path.join(videos, render.VIDEO_DIR)}',
          f'--csv={os.path.join(videos, render.CSV_NAME)}',
          f'--data_dir={out}', f'--config={_CONFIG.value}', '--workers=2', '--chunk_size=8',
          *[f'--config.{o}' for o in _OVERRIDES.value]]


def _moment(log_path: str, workdir: str, num_logged: int, stale: set[str]) -> str:
  """What the process was doing when it was killed, from its log and its checkpoint folder
  (`stale`: temporary save folders left by earlier kills)."""
  with open(log_path, errors='replace') as f:
    lines = [l for l in f if chaos_runs.TIMESTAMP.match(l)]
  last = lines[-1] if lines else ''
  if chaos_runs.save_folders_in_flight(workdir) - stale:
    return 'inside an async save'
  steps = chaos_runs.checkpoint_steps(workdir)
  if steps:
    newest = os.path.join(workdir, 'checkpoints', str(steps[-1]))
    if time.time() - os.path.getmtime(newest) < 2.0:
      return 'right after a save'
  if 'evaluating' in last or 'retrieval:' in last or 'generation (' in last:
    return 'evaluation'
  if 'compiling' in last:
    return 'compile'
  if 'compiled' in last:  # Steps run unlogged until the first log line.
    return 'training'
  if len([l for l in lines if chaos_runs.STEP_LINE.search(l)]) > num_logged:
    return 'training'
  return 'start-up'


def _newest_logged(workdir: str) -> int:
  """The newest step in the run's metrics.jsonl (0 if none); a row cut off by the kill is
  skipped, as the trainer skips it."""
  rows = metrics_io.read_jsonl(os.path.join(workdir, 'metrics.jsonl'))
  return max((row['step'] for row in rows), default=0)


def _run(command: list[str], log_path: str, kill_after: float | None, sig: int,
         before_signal=lambda: None, on_poll=lambda seconds: None, kill_when=None):
  """Starts `command` in its own process group, logging to `log_path`; after `kill_after` s
  (counted from when `kill_when()` first holds, if given) calls `before_signal` and sends
  `sig` (SIGKILL to the group, SIGTERM to the main process); `on_poll(seconds since start)`
  is called every 50 ms. Returns (exit status, killed?)."""
  with open(log_path, 'a') as log:
    log.write(f'\n$ {" ".join(command)}\n')
    log.flush()
    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
  start = time.monotonic()
  killed = False
  try:
    while proc.poll() is None:
      on_poll(time.monotonic() - start)
      if kill_when is not None and kill_when():
        kill_after, kill_when = kill_after + time.monotonic() - start, None
      if (kill_after is not None and kill_when is None and
          time.monotonic() - start >= kill_after):
        before_signal()
        killed = True
        if sig == signal.SIGKILL:
          os.killpg(proc.pid, signal.SIGKILL)
        else:
          proc.send_signal(sig)
        break
      time.sleep(0.05)
    code = proc.wait(timeout=900)
  finally:
    try:  # Orphans (data workers) of a killed main process.
      os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
      pass
  return code, killed


def _attempt_output(log_path: str) -> str:
  """What the newest attempt in `log_path` has printed so far."""
  with open(log_path, errors='replace') as f:
    return f.read().rsplit('\n$ ', 1)[-1]


def _restored_step(log_path: str) -> int:
  """The step the newest attempt in `log_path` resumed from (0: a fresh start)."""
  m = re.findall(r'resumed from step (\d+)', _attempt_output(log_path))
  return int(m[-1]) if m else 0


def _count_step_lines(log_path: str) -> int:
  if not os.path.exists(log_path):
    return 0
  with open(log_path, errors='replace') as f:
    return sum(1 for l in f if chaos_runs.STEP_LINE.search(l))


class TrainJob:
  """Training in `workdir`: progress is the newest logged step, resume points are checkpoints."""

  # Kills spread over the run: each draw covers start-up plus a share of what is left, so
  # that the last kill still finds training to interrupt.
  spread = True

  def __init__(self, workdir: str):
    self.workdir = workdir
    self.command = _train_command(workdir)

  def resume_point(self) -> int:
    return max(chaos_runs.checkpoint_steps(self.workdir), default=0)

  def reached(self) -> int:
    return _newest_logged(self.workdir)

  def remaining_life(self, profile: dict) -> float:
    return chaos_runs.remaining_life(profile, self.resume_point())

  def begin(self) -> None:
    self._stale = chaos_runs.save_folders_in_flight(self.workdir)

  def wipe(self) -> None:
    """Removes the run, for a start from nothing."""
    shutil.rmtree(self.workdir, ignore_errors=True)

  def compare(self, reference: 'TrainJob') -> dict:
    """chaos_runs.compare_training's verdict with 'equal' when all three parts are."""
    verdict = chaos_runs.compare_training(reference.workdir, self.workdir)
    return {'equal': verdict['state'] and verdict['metrics'] and verdict['results'], **verdict}

  def moment(self, log_path: str, lines_before: int) -> str:
    return _moment(log_path, self.workdir, lines_before, self._stale)


class PrepareJob:
  """`prepare` into `out`: progress is decoded chunks, then the ArrayRecord shards."""

  # Start-up is most of a small build's life: each draw covers the whole life left.
  spread = False

  def __init__(self, videos: str, out: str):
    self.out = out
    self.command = _prepare_command(videos, out)

  def _files(self, pattern: str) -> list[str]:
    return [os.path.join(d, f) for d, _, fs in os.walk(self.out) for f in fs
            if re.search(pattern, f)]

  def resume_point(self) -> int:
    return len(self._files(r'\.npz$'))

  reached = resume_point

  def begin(self) -> None:
    pass

  def wipe(self) -> None:
    """Removes the build, for a start from nothing."""
    shutil.rmtree(self.out, ignore_errors=True)

  def compare(self, reference: 'PrepareJob') -> dict:
    """chaos_runs.compare_datasets's verdict."""
    return chaos_runs.compare_datasets(reference.out, self.out)

  def remaining_life(self, profile: dict) -> float:
    done = self.resume_point() / max(profile.get('chunks', 1), 1)
    return profile['startup'] + (profile['life'] - profile['startup']) * max(1.0 - done, 0.1)

  def building(self, log_path: str) -> bool:
    """Whether this attempt has started writing the ArrayRecord shards (tfds' 'Generating')."""
    return 'Generating' in _attempt_output(log_path)

  def moment(self, log_path: str, lines_before: int) -> str:
    del lines_before
    if self._files(r'array_record') or self.building(log_path):
      return 'ArrayRecord build'
    if 'decoding' in _attempt_output(log_path):  # Its progress bar has started.
      return f'decode ({self.resume_point()} chunks on disk)'
    return 'start-up'


def chaos_run(name: str, job, profile: dict, sig: int, rng: random.Random,
              compare) -> tuple[list[dict], list[dict]]:
  """Kills `job` `--kills` times at random moments, then lets it finish; returns (rows,
  verdicts). One row per attempt: seconds until the signal, the moment it hit, the point that
  attempt resumed from (checkpoint step or decoded chunks), the progress reached and its exit
  status. A run that ends before its kill (the draw was later than its life) is compared by
  `compare()` -> {'equal': bool, ...}, then started again from nothing, until every kill was
  sent; the verdicts list one comparison per finished run."""
  log_path = os.path.join(_ROOT.value, f'{name}.log')
  rows, verdicts, kills = [], [], 0
  while True:
    kills_left = _KILLS.value - kills
    resumed_from = job.resume_point()
    after = None
    if kills_left > 0:
      life = job.remaining_life(profile)
      share = (life - profile['startup']) / kills_left if job.spread else life
      after = rng.uniform(0.0, min(0.95 * life, profile['startup'] + 2 * share))
    lines_before = _count_step_lines(log_path)
    job.begin()
    moment, kill_when = {}, None
    if kills < _BUILD_KILLS.value and isinstance(job, PrepareJob):
      # The shard build lasts under a second of a build's life: random draws seldom land in
      # it, so these kills wait for it and land within its first half second.
      after, kill_when = rng.uniform(0.0, 0.5), lambda: job.building(log_path)
    code, killed = _run(job.command, log_path, after, sig, before_signal=lambda: moment.update(
        at=job.moment(log_path, lines_before)), kill_when=kill_when)
    kills += killed
    rows.append({'attempt': len(rows), 'signal': signal.Signals(sig).name if killed else '-',
                 'after_s': round(after, 1) if killed else None,
                 'moment': moment.get('at', 'ran to the end'), 'resumed_from': resumed_from,
                 'reached': job.reached(), 'exit': code})
    logging.info('%s attempt %d: %s', name, len(rows) - 1, rows[-1])
    if killed:
      continue
    if code != 0:
      raise RuntimeError(f'{name}: attempt {len(rows) - 1}, not killed, exited with status '
                         f'{code}; see {log_path}')
    verdicts.append(compare())
    if kills >= _KILLS.value:
      return rows, verdicts
    logging.info('%s finished before kill %d: compared, and started again from nothing',
                 name, kills + 1)
    job.wipe()


def _reference(job, name: str) -> dict:
  """Runs `job` once uninterrupted (unless ROOT/NAME.json says it already did); its profile."""
  path = os.path.join(_ROOT.value, f'{name}.json')
  if os.path.exists(path):
    with open(path) as f:
      return json.load(f)
  log_path = os.path.join(_ROOT.value, f'{name}.log')
  # A reference that was itself interrupted would compare resumed runs with a resumed run.
  job.wipe()
  t0 = time.monotonic()
  seen = {'chunks': 0, 'first_chunk': None}

  def watch_chunks(seconds):  # prepare deletes its decoded chunks once the shards are built.
    if isinstance(job, PrepareJob):
      seen['chunks'] = max(seen['chunks'], job.resume_point())
      if seen['chunks'] and seen['first_chunk'] is None:
        seen['first_chunk'] = seconds

  code, _ = _run(job.command, log_path, None, signal.SIGKILL, on_poll=watch_chunks)
  if code != 0:
    raise RuntimeError(f'the uninterrupted {name} run failed (status {code}); see {log_path}')
  profile = chaos_runs.profile(log_path, time.monotonic() - t0)
  if isinstance(job, PrepareJob):
    profile['chunks'] = max(seen['chunks'], 1)
    profile['startup'] = seen['first_chunk'] or 0.15 * profile['life']
  with open(path, 'w') as f:
    json.dump(profile, f)
  return profile


def _table(rows: list[dict]) -> str:
  head = '| attempt | signal after (s) | moment | resumed from | reached | exit |'
  lines = [head, '| --- | --- | --- | --- | --- | --- |']
  for r in rows:
    lines.append(f'| {r["attempt"]} | {r["signal"]} {r["after_s"] or ""} | {r["moment"]} | '
                 f'{r["resumed_from"]} | {r["reached"]} | {r["exit"]} |')
  return '\n'.join(lines)


def _job(kind: str, suffix: str):
  root = _ROOT.value
  if _JOB.value == 'train':
    return TrainJob(os.path.join(root, f'{kind}{suffix}'))
  return PrepareJob(os.path.join(root, 'videos'), os.path.join(root, f'{kind}{suffix}'))


def _render_videos() -> None:
  """prepare's input: --prepare_clips synthetic clips as mp4 (kept between runs)."""
  path, _, variant = _CONFIG.value.partition(':')
  spec = importlib.util.spec_from_file_location('chaos_config', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config(variant or None)
  num_test = max(_CLIPS.value // 4, 1)
  render.render_vggsound_layout(config, os.path.join(_ROOT.value, 'videos'),
                                num_train=_CLIPS.value - num_test, num_test=num_test,
                                workers=2)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  os.makedirs(_ROOT.value, exist_ok=True)
  if _JOB.value == 'prepare':
    _render_videos()
  profile = _reference(_job('reference', ''), 'reference')
  rng = random.Random(_SEED.value)
  report = {'job': _JOB.value, 'config': _CONFIG.value, 'overrides': _OVERRIDES.value,
            'kills': _KILLS.value, 'reference_seconds': round(profile['life'], 1), 'runs': {}}
  markdown = [f'# Chaos: {_JOB.value} {_CONFIG.value} {" ".join(_OVERRIDES.value)}', '',
              f'Uninterrupted run: {profile["life"]:.0f} s.']
  for name in _SIGNALS.value:
    sig = signal.Signals[f'SIG{name.upper().removeprefix("SIG")}']
    job = _job('chaos_', sig.name)
    reference = _job('reference', '')
    rows, verdicts = chaos_run(f'chaos_{sig.name}', job, profile, sig, rng,
                               lambda: job.compare(reference))
    ok = all(v['equal'] for v in verdicts)
    kills = sum(r['signal'] != '-' for r in rows)
    report['runs'][sig.name] = {'rows': rows, 'verdicts': verdicts, 'kills': kills, 'equal': ok}
    summary = (f'{sig.name}: {kills} kills over {len(verdicts)} finished run(s); final outputs '
               f'{"EQUAL to" if ok else "DIFFERENT from"} the uninterrupted run\'s' +
               ('' if ok else f': {[v["differences"] for v in verdicts]}'))
    markdown += ['', f'## {sig.name}', '', _table(rows), '', summary]
    print(_table(rows), '\n', summary, sep='', flush=True)
  with open(os.path.join(_ROOT.value, 'chaos_report.json'), 'w') as f:
    json.dump(report, f, indent=1)
  with open(os.path.join(_ROOT.value, 'chaos_report.md'), 'w') as f:
    f.write('\n'.join(markdown) + '\n')
  if not all(r['equal'] for r in report['runs'].values()):
    sys.exit(1)


if __name__ == '__main__':
  cli.run(main)
