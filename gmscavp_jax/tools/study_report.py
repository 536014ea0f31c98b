"""What a study of `studies` has measured: each row's evaluation, found where a finished one
lies, and the report of them all (OUT/STUDY.md, ROOT/STUDY/study.json, OUT/STUDY.png)."""

import dataclasses
import os
import re
from typing import Sequence

from absl import logging

from gmscavp_jax.evaluators import suite
from gmscavp_jax.infra import plotting
from gmscavp_jax.tools import runs
from gmscavp_jax.tools import study_rows

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


def write_report(study: str, rows: Sequence[study_rows.Row], view: dict, base: str, out: str,
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
    # Each value with its 95% interval over the row's clips, where its evaluation has one.
    lines.append(f'| {r.label} | ' + ' | '.join(suite.cell_with_interval(res, k, d)
                                                for k, _, _, d in columns)
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
