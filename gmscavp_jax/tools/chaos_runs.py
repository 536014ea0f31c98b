"""What the chaos harness reads from a run and compares between runs: a run's time line (from
its absl log), and a killed-and-resumed job's outputs against those of the same job run once
without interruption.

Training: every leaf of the final checkpoint's state (params, optimizer state, EMA, step),
bit for bit; the metrics.jsonl rows and results.json without their timing fields. Prepare:
every file of the built dataset byte for byte, except the reports that carry timings.
"""

import hashlib
import json
import os
import re

import numpy as np
import orbax.checkpoint as ocp

from gmscavp_jax.infra import metrics_io

# An absl log line's time of day, and the trainer's log line of a train step.
TIMESTAMP = re.compile(r'^[IWEF]\d{4} (\d\d):(\d\d):(\d\d\.\d+)')
STEP_LINE = re.compile(r'\] step (\d+)  loss')


def seconds(line: str) -> float | None:
  """The time of day of an absl log line in seconds (None for other lines)."""
  m = TIMESTAMP.match(line)
  return None if m is None else int(m[1]) * 3600 + int(m[2]) * 60 + float(m[3])


def profile(log_path: str, wall: float) -> dict:
  """The reference run's time line from its absl log: {'startup': s to the first step,
  'steps': [(step, s since start)], 'life': s}."""
  with open(log_path, errors='replace') as f:
    lines = f.readlines()
  times = [t for t in map(seconds, lines) if t is not None]
  first = times[0] if times else 0.0
  steps = [(int(m[1]), seconds(l) - first) for l in lines if (m := STEP_LINE.search(l))]
  if steps:
    per_step = (steps[-1][1] - steps[0][1]) / max(steps[-1][0] - steps[0][0], 1)
    startup = max(steps[0][1] - steps[0][0] * per_step, 1.0)
  else:
    startup = wall / 2
  return {'startup': startup, 'steps': steps, 'life': wall}


def remaining_life(profile: dict, restored: int) -> float:
  """Seconds a process that resumes from step `restored` would run: start-up, then what the
  reference still had to do after that step."""
  passed = 0.0
  for step, t in profile['steps']:
    if step <= restored:
      passed = t - profile['startup']
  return profile['startup'] + max(profile['life'] - profile['startup'] - passed, 1.0)


# Keys whose values are measurements of the machine, not of the run: speeds, durations, and
# where a file was written. Everything else in a row must be equal.
VOLATILE = re.compile(r'per_sec|seconds|_time$|evaluator_dir|commit')


def checkpoint_steps(workdir: str) -> list[int]:
  """The finished checkpoint steps of `workdir` (temporary folders of a save in flight are
  not steps)."""
  directory = os.path.join(workdir, 'checkpoints')
  if not os.path.isdir(directory):
    return []
  return sorted(int(d) for d in os.listdir(directory) if d.isdigit())


def save_folders_in_flight(workdir: str) -> set[str]:
  """Orbax's temporary folders in the checkpoints: saves being written now, or left behind by
  a save that a kill interrupted (never restored from)."""
  directory = os.path.join(workdir, 'checkpoints')
  if not os.path.isdir(directory):
    return set()
  return {d for d in os.listdir(directory) if 'tmp' in d}


def _state(workdir: str, step: int) -> dict:
  path = os.path.join(workdir, 'checkpoints', str(step), 'state')
  return ocp.StandardCheckpointer().restore(path)


def _stable(row: dict) -> dict:
  return {k: v for k, v in row.items() if not VOLATILE.search(k)}


def compare_training(reference: str, resumed: str) -> dict:
  """{'state', 'metrics', 'results': bool, 'differences': [str]} for two workdirs of one
  config: the newest checkpoints' state leaves must be bitwise equal, and the metrics rows and
  results.json equal outside their timing fields."""
  differences = []
  ref_steps, res_steps = checkpoint_steps(reference), checkpoint_steps(resumed)
  state_equal = bool(ref_steps) and ref_steps[-1:] == res_steps[-1:]
  if not state_equal:
    differences.append(f'final checkpoint steps differ: {ref_steps[-1:]} vs {res_steps[-1:]}')
  else:
    ref_leaves = _flat(_state(reference, ref_steps[-1]))
    res_leaves = _flat(_state(resumed, res_steps[-1]))
    if ref_leaves.keys() != res_leaves.keys():
      state_equal = False
      differences.append('state trees differ in structure')
    for name in sorted(ref_leaves.keys() & res_leaves.keys()):
      a, b = ref_leaves[name], res_leaves[name]
      if a.shape != b.shape or a.dtype != b.dtype or not np.array_equal(a, b, equal_nan=True):
        state_equal = False
        differences.append(f'state leaf {name} differs')

  rows = [[_stable(r) for r in metrics_io.read_jsonl(os.path.join(w, 'metrics.jsonl'))]
          for w in (reference, resumed)]
  metrics_equal = rows[0] == rows[1]
  if not metrics_equal:
    steps = [[r.get('step') for r in rs] for rs in rows]
    differences.append(f'metrics.jsonl rows differ (steps {steps[0]} vs {steps[1]})')

  results = [_read_json(os.path.join(w, 'results.json')) for w in (reference, resumed)]
  results_equal = results[0] is not None and _stable(results[0]) == _stable(results[1] or {})
  if not results_equal:
    differences.append('results.json differs')
  return {'state': state_equal, 'metrics': metrics_equal, 'results': results_equal,
          'differences': differences[:20]}


def _flat(tree) -> dict:
  """{'/'-joined path: numpy array} of a restored state tree."""
  out = {}

  def visit(prefix, node):
    if isinstance(node, dict):
      for k, v in node.items():
        visit(f'{prefix}/{k}' if prefix else str(k), v)
    elif isinstance(node, (list, tuple)):
      for i, v in enumerate(node):
        visit(f'{prefix}/{i}', v)
    elif node is not None:
      out[prefix] = np.asarray(node)

  visit('', tree)
  return out


def _read_json(path: str):
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def tree_digests(root: str, skip: re.Pattern = re.compile(r'report|\.txt$|\.log$')) -> dict:
  """{relative path: sha256} of every file under `root` whose name does not match `skip` (the
  prepare reports, which hold timings)."""
  digests = {}
  for folder, _, files in os.walk(root):
    for name in files:
      path = os.path.join(folder, name)
      rel = os.path.relpath(path, root)
      if skip.search(rel):
        continue
      with open(path, 'rb') as f:
        digests[rel] = hashlib.sha256(f.read()).hexdigest()
  return digests


def compare_datasets(reference: str, resumed: str) -> dict:
  """{'equal': bool, 'files': n, 'records': n, 'differences': [str]}: two built datasets.

  Every file but the ArrayRecord shards byte for byte; the shards record by record, in
  order, every field bit for bit. Not the shards' bytes: two uninterrupted builds of the same
  videos write different bytes (measured: the same records, each serialized with its
  feature map in another order, as protobuf maps are serialized in a per-process order).
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top  (slow import)
  skip = re.compile(r'report|\.txt$|\.log$|array_record')
  verdict = compare_trees(reference, resumed, skip)
  folders = sorted({os.path.dirname(p) for p in tree_digests(reference)
                    if p.endswith('dataset_info.json')})
  records = 0
  for folder in folders:
    builders = [tfds.builder_from_directory(os.path.join(root, folder))
                for root in (reference, resumed)]
    for split in builders[0].info.splits:
      a, b = (x.as_data_source(split=split) for x in builders)
      if len(a) != len(b):
        verdict['differences'].append(f'{folder} {split}: {len(a)} vs {len(b)} records')
        continue
      records += len(a)
      for i in range(len(a)):
        x, y = a[i], b[i]
        if x.keys() != y.keys() or not all(np.array_equal(x[k], y[k]) for k in x):
          verdict['differences'].append(f'{folder} {split} record {i} differs')
  verdict['equal'] = not verdict['differences'] and records > 0
  verdict['records'] = records
  return verdict


def compare_trees(reference: str, resumed: str,
                  skip: re.Pattern = re.compile(r'report|\.txt$|\.log$')) -> dict:
  """{'equal': bool, 'files': n, 'differences': [str]}: two folders byte for byte, but for
  the files whose path matches `skip`."""
  a, b = tree_digests(reference, skip), tree_digests(resumed, skip)
  differences = [f'only in the reference: {p}' for p in sorted(a.keys() - b.keys())]
  differences += [f'only in the resumed build: {p}' for p in sorted(b.keys() - a.keys())]
  differences += [f'{p} differs' for p in sorted(a.keys() & b.keys()) if a[p] != b[p]]
  return {'equal': not differences and bool(a), 'files': len(a), 'differences': differences[:20]}
