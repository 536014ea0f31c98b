"""The chaos harness's parts that need no training run: how it compares two runs, how it reads
a run's time line, and the metrics file surviving a kill in the middle of a row."""

import json
import os

import grain.python as grain
import jax.numpy as jnp
import numpy as np

from gmscavp_jax.infra import checkpointing
from gmscavp_jax.infra import metrics_io

from gmscavp_jax.tools import chaos_runs


def test_a_row_cut_off_by_a_kill_is_dropped_and_the_next_row_starts_a_clean_line(tmp_path):
  path = str(tmp_path / 'metrics.jsonl')
  with open(path, 'w') as f:
    f.write(json.dumps({'step': 50, 'train/loss': 1.0}) + '\n')
    f.write('{"step": 60, "retrieval/v2a_R')  # The kill landed inside this write.
  assert metrics_io.read_jsonl(path) == [{'step': 50, 'train/loss': 1.0}]
  metrics_io.truncate_jsonl(path, after_step=60)
  with open(path, 'a') as f:
    f.write(json.dumps({'step': 60, 'train/loss': 0.5}) + '\n')
  assert [r['step'] for r in metrics_io.read_jsonl(path)] == [50, 60]


def _workdir(root, name, w, loss=1.0, speed=3.0):
  workdir = str(root / name)
  ckpt = checkpointing.Checkpointer(workdir, keep=2)
  it = iter(grain.DataLoader(
      data_source=list(range(8)), operations=[], worker_count=0,
      sampler=grain.IndexSampler(8, shuffle=False, seed=0, num_epochs=1),
      shard_options=grain.NoSharding()))
  ckpt.save(4, {'params': {'w': jnp.asarray(w)}, 'step': jnp.asarray(4)}, it, '{}')
  ckpt.close()
  with open(os.path.join(workdir, 'metrics.jsonl'), 'w') as f:
    f.write(json.dumps({'step': 4, 'train/loss': loss, 'steps_per_sec': speed}) + '\n')
  with open(os.path.join(workdir, 'results.json'), 'w') as f:
    json.dump({'step': 4, 'retrieval/v2a_R@1': 3.0, 'gen/seconds_per_clip': speed}, f)
  return workdir


def test_training_runs_are_equal_only_when_every_state_bit_and_metric_is(tmp_path):
  w = np.linspace(-1, 1, 6, dtype=np.float32)
  reference = _workdir(tmp_path, 'reference', w)
  # Timings differ between any two runs; they are not part of the comparison.
  same = _workdir(tmp_path, 'same', w, speed=9.0)
  verdict = chaos_runs.compare_training(reference, same)
  assert verdict['state'] and verdict['metrics'] and verdict['results'], verdict

  flipped = w.copy()
  flipped.view(np.int32)[2] ^= 1  # One bit of one parameter.
  other = _workdir(tmp_path, 'other', flipped, loss=1.0 + 1e-7)
  verdict = chaos_runs.compare_training(reference, other)
  assert not verdict['state'] and not verdict['metrics'] and verdict['results']
  assert 'state leaf params/w differs' in verdict['differences']


def test_built_datasets_are_compared_byte_for_byte_without_their_reports(tmp_path):
  for name, record, report in (('a', b'\x00\x01', 'took 3 s'), ('b', b'\x00\x01', 'took 5 s'),
                               ('c', b'\x00\x02', 'took 3 s')):
    os.makedirs(tmp_path / name / 'v1')
    (tmp_path / name / 'v1' / 'train.array_record-00000-of-00001').write_bytes(record)
    (tmp_path / name / 'prepare_report.json').write_text(report)
  assert chaos_runs.compare_trees(str(tmp_path / 'a'), str(tmp_path / 'b'))['equal']
  verdict = chaos_runs.compare_trees(str(tmp_path / 'a'), str(tmp_path / 'c'))
  assert not verdict['equal']
  assert verdict['differences'] == ['v1/train.array_record-00000-of-00001 differs']


def test_the_reference_time_line_gives_start_up_and_what_is_left_after_a_step(tmp_path):
  log = tmp_path / 'reference.log'
  log.write_text('\n'.join([
      '$ python -m gmscavp_jax.main ...',
      'I1206 10:00:00.000000 1 train.py:126] experiment msa on 1 devices',
      'I1206 10:00:30.000000 1 train.py:181] step 50  loss 8.1',
      'I1206 10:00:40.000000 1 train.py:181] step 100  loss 7.9',
      'I1206 10:01:00.000000 1 main.py:38] final results: {}']))
  profile = chaos_runs.profile(str(log), wall=62.0)
  assert profile['startup'] == 20.0  # 30 s at step 50, 0.2 s a step.
  assert profile['steps'] == [(50, 30.0), (100, 40.0)]
  # From scratch: the whole life; after step 50: start-up plus what followed step 50.
  assert chaos_runs.remaining_life(profile, 0) == 62.0
  assert chaos_runs.remaining_life(profile, 50) == 20.0 + 62.0 - 30.0


def test_the_log_window_comes_back_from_a_checkpoint_in_its_own_dtypes(tmp_path):
  window = [{'train/loss': np.float32(0.1), 'train/skipped': np.int32(0)},
            {'train/loss': np.float32(0.3), 'train/skipped': np.int32(1)}]
  workdir = _workdir(tmp_path, 'run', np.zeros(3, np.float32))
  ckpt = checkpointing.Checkpointer(workdir, keep=2)
  ckpt.save(6, {'params': {'w': jnp.zeros(3)}, 'step': jnp.asarray(6)}, iter(grain.DataLoader(
      data_source=list(range(8)), operations=[], worker_count=0,
      sampler=grain.IndexSampler(8, shuffle=False, seed=0, num_epochs=1),
      shard_options=grain.NoSharding())), '{}', log_window=window)
  ckpt.wait()
  restored = ckpt.log_window(6)
  assert ckpt.log_window(4) == []  # Saved without one.
  ckpt.close()
  assert [{k: (v.item(), v.dtype) for k, v in m.items()} for m in restored] == [
      {k: (v.item(), v.dtype) for k, v in m.items()} for m in window]
  # The mean a resumed run logs is the mean the uninterrupted run logged, bit for bit.
  assert np.mean([m['train/loss'] for m in restored]) == np.mean(
      [m['train/loss'] for m in window])


def test_a_finished_run_evaluated_again_replaces_its_evaluation_rows(tmp_path):
  path = str(tmp_path / 'metrics.jsonl')
  rows = [{'step': 10, 'train/loss': 1.0}, {'step': 10, 'retrieval/v2a_R@1': 3.0},
          {'step': 12, 'train/loss': 0.9}, {'step': 12, 'retrieval/v2a_R@1': 4.0}]
  with open(path, 'w') as f:
    f.writelines(json.dumps(r) + '\n' for r in rows)
  metrics_io.truncate_jsonl(path, after_step=12)
  assert metrics_io.read_jsonl(path) == rows
  metrics_io.truncate_jsonl(path, after_step=12, evaluations_of_it=True)
  assert metrics_io.read_jsonl(path) == rows[:3]
  metrics_io.truncate_jsonl(path, after_step=10)
  assert metrics_io.read_jsonl(path) == rows[:2]
