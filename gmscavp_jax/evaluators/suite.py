"""The generation metrics of one evaluation (DESIGN §5) and their reference rows.

Given audio generated for the test videos G, the real audio of G and of the next, disjoint
test clips R, `score` returns the paper's metrics and two sanity rows computed the same way:

  gen/*            the generated audio (KLD paired with G's real audio, FAD against R's).
  ref/gt/*         the real audio of G as if it were generated: FAD against R shows the
                   metric's own floor at this sample size; KLD pairs each clip with a clip of
                   R with the same sounding classes (a disjoint half: identical clips would
                   give 0 by construction); Align Acc is the classifier's hit rate on real
                   pairs.
  ref/shuffled/*   the real audio of another clip of G (clip i gets clip i+1's audio): right
                   kind of sound, wrong clip; Align Acc falls to the negatives' rate.
  ref/vocoded/*    the real log-mel of G through the project's vocoder (Griffin-Lim) to a
                   waveform and analysed again, scored exactly as gen/*: what the waveform
                   path costs, the ceiling of any generator that is listened to.

The generated audio's metrics also get 95% bootstrap intervals over the clips
(gen/KEY_ci95_low, gen/KEY_ci95_high) and FAD-inf (gen/fad_inf): see `intervals`.
"""

import numpy as np

from gmscavp_jax.diffusion import guidance as guidance_lib
from gmscavp_jax.evaluators import classifiers
from gmscavp_jax.evaluators import generation
from gmscavp_jax.evaluators import intervals
from gmscavp_jax.evaluators import metrics
from gmscavp_jax.evaluators import sync_offset


# The columns of the ablation and study tables: (results key, column, lower is better,
# decimals), and the keys their plots show. A run evaluated before a key existed shows '—'.
METRICS = (
    ('gen/kld', 'KLD ↓', True, 2),
    ('gen/fad', 'FAD ↓', True, 2),
    ('gen/align_acc', 'Align Acc ↑', False, 1),
    ('gen/onset_f1@50ms', 'onset F1@50ms ↑', False, 1),
    ('gen/onset_f1@100ms', 'onset F1@100ms ↑', False, 1),
    ('gen/onset_precision@100ms', 'onset precision@100ms ↑', False, 1),
    # Recall under its older name: every results.json has it, also those before F1.
    ('gen/onset_hit@100ms', 'onset recall@100ms ↑', False, 1),
) + tuple((f'retrieval/{d}_R@{k}', f'{d} R@{k}', False, 1)
          for d in ('v2a', 'a2v') for k in (1, 5, 10))
PLOT_METRICS = ('gen/kld', 'gen/fad', 'gen/align_acc', 'gen/onset_f1@100ms',
                'retrieval/v2a_R@1', 'retrieval/a2v_R@1')
# The R@k of oracles that know each test clip's classes but not its timing (evaluators/
# retrieval.py `ceiling_metrics`): the same in both directions, so one key serves v2a and a2v.
# (key prefix, row name); the tables show them beside the retrieval columns.
CEILINGS = (('retrieval/ceiling', 'timing-blind ceiling'),
            ('retrieval/class_ceiling', 'class-only ceiling'))


def match_by_labels(labels: np.ndarray, candidates: np.ndarray) -> np.ndarray:
  """For each row of multi-hot `labels` (N,K), the first row of `candidates` (M,K) with the
  same classes, else the first with the same first class, else -1; (N,) int."""
  out = np.full(len(labels), -1)
  for i, row in enumerate(labels):
    same = np.flatnonzero(np.all(candidates == row, axis=1))
    if not same.size:
      same = np.flatnonzero(candidates[:, np.argmax(row)] > 0)
    if same.size:
      out[i] = same[i % same.size]  # Spread the matches over the candidates.
  return out


def video_oracle_class_acc(labels: np.ndarray, visible: np.ndarray,
                           flashing: np.ndarray) -> float:
  """The class accuracy (percent) that audio made from the video alone can reach in the
  synthetic world: an oracle that sees which classes are on screen (visible) and which of
  them flash (flashing; only sounding objects flash) makes the sound of a flashing class
  when there is one (always right), else of a visible class drawn at random (right with
  probability |sounding| / |visible|). labels, visible, flashing: (N,K) multi-hot."""
  labels, visible, flashing = (np.asarray(a) > 0 for a in (labels, visible, flashing))
  guess = labels.sum(axis=1) / np.maximum((visible | labels).sum(axis=1), 1)
  return float(100.0 * np.mean(np.where(flashing.any(axis=1), 1.0, guess)))


def _rows(prefix: str, *, kld: float, fad: float, align: np.ndarray, class_logits,
          labels, onset_detected, onsets) -> dict:
  out = {f'{prefix}/kld': kld, f'{prefix}/fad': fad,
         f'{prefix}/align_acc': metrics.align_accuracy(align),
         f'{prefix}/class_acc': classifiers.top1_in_labels(class_logits, labels)}
  for ms in generation.TOLERANCES_MS:
    out.update(generation.onset_keys(f'{prefix}/onset', f'@{ms}ms', metrics.onset_hit_rate(
        onset_detected, onsets, ms / 1000)))
  return out


# The metrics that get bootstrap intervals (`generated_intervals`).
INTERVAL_METRICS = ('kld', 'fad', 'align_acc', 'class_acc') + tuple(
    f'onset_f1@{ms}ms' for ms in generation.TOLERANCES_MS)


def generated_intervals(prefix: str, *, real_logits: np.ndarray, scored: dict,
                        reference_embedding: np.ndarray, align: np.ndarray,
                        labels: np.ndarray, detected: list, onsets: list) -> dict:
  """95% bootstrap intervals over clips of PREFIX/{INTERVAL_METRICS}, and PREFIX/fad_inf.

  Each resample draws N of the N clips with replacement and scores them as `score` does:
  KLD against the same clips' real audio, FAD against the whole reference set, onset F1
  from the resampled clips' summed counts.
  """
  p_real, p_gen = metrics.softmax(real_logits), metrics.softmax(scored['logits'])
  ref_stats = metrics.gaussian_stats(reference_embedding)
  stats = {
      'kld': lambda i: metrics.kl_divergence(p_real[i], p_gen[i]),
      'fad': lambda i: intervals.fad_to(scored['embedding'][i], ref_stats),
      'align_acc': lambda i: metrics.align_accuracy(align[i]),
      'class_acc': lambda i: classifiers.top1_in_labels(scored['logits'][i], labels[i]),
  }
  for ms in generation.TOLERANCES_MS:
    counts = metrics.onset_counts(detected, onsets, ms / 1000)
    stats[f'onset_f1@{ms}ms'] = (
        lambda i, c=counts: metrics.onset_scores_of_counts(c[i].sum(axis=0))['f1'])
  out = {}
  for name in INTERVAL_METRICS:
    out.update(intervals.interval_keys(f'{prefix}/{name}', stats[name], len(align)))
  inf = intervals.fad_inf(scored['embedding'], reference_embedding)
  out.update({f'{prefix}/{k}': v for k, v in inf.items()})
  return out


def score(evalset: classifiers.EvaluatorSet, generated: np.ndarray, clips: dict,
          reference: dict, frame_rate: float, vocoded: np.ndarray | None = None) -> dict:
  """Every generation metric of `generated` (N,Ta,F) log-mels for the videos of `clips`.

  Args:
    evalset: the dataset's trained evaluators.
    generated: log-mels generated for clips['frames'].
    clips: the N clips G: frames (N,T,H,W,3), log_mel (N,Ta,F) real, labels (N,K), onsets
      (true onset times, or None: those detected in the real audio are used).
    reference: the disjoint clips R: log_mel (M,Ta,F), labels (M,K).
    frame_rate: log-mel frames per second.
    vocoded: optional (N,Ta,F) log-mels of clips['log_mel'] after the vocoder round trip
      (log-mel -> waveform -> log-mel); None leaves out the ref/vocoded row.
  Returns:
    gen/{kld,fad,align_acc,class_acc} and gen/onset_{f1,precision,recall,hit}@{50,100}ms
    (hit = recall, see `generation.onset_scores`), and the same under ref/gt/,
    ref/shuffled/ and ref/vocoded/ (see the module docstring), and
    ref/video_oracle/class_acc where clips have 'flashing' (`video_oracle_class_acc`);
    percentages in 0-100. The gen/* metrics also have 95% intervals over the clips and
    FAD-inf (`generated_intervals`). Audio-video offsets in seconds (`sync_offset.offset_keys`)
    for gen, ref/gt, ref/shifted (the real audio SHIFTED_SECONDS late) and ref/shuffled.
  """
  gen = evalset.audio(generated)
  real = evalset.audio(clips['log_mel'])
  ref = evalset.audio(reference['log_mel'])
  shuffle = np.roll(np.arange(len(generated)), -1)
  detected_real = [metrics.detect_onsets(m, frame_rate) for m in clips['log_mel']]
  # Without true onset times (a prepared dataset) the real audio's detected onsets are the
  # reference, so ref/gt's onset hit-rate is 100 by construction.
  onsets = detected_real if clips['onsets'] is None else clips['onsets']
  fad_floor = metrics.fad(real['embedding'], ref['embedding'])

  def as_generated(prefix, mel, scored, with_intervals=False):
    # KLD paired with G's real audio, FAD against R's: how gen/* is scored.
    align = evalset.aligned_prob(clips['frames'], mel)
    detected = [metrics.detect_onsets(m, frame_rate) for m in mel]
    out = _rows(prefix, kld=metrics.kld_from_logits(real['logits'], scored['logits']),
                fad=metrics.fad(scored['embedding'], ref['embedding']), align=align,
                class_logits=scored['logits'], labels=clips['labels'],
                onset_detected=detected, onsets=onsets)
    if with_intervals:
      out.update(generated_intervals(
          prefix, real_logits=real['logits'], scored=scored,
          reference_embedding=ref['embedding'], align=np.asarray(align),
          labels=np.asarray(clips['labels']), detected=detected, onsets=onsets))
    return out

  out = as_generated('gen', generated, gen, with_intervals=True)
  if vocoded is not None:
    out.update(as_generated('ref/vocoded', vocoded, evalset.audio(vocoded)))
  match = match_by_labels(clips['labels'], reference['labels'])
  has = match >= 0
  out.update(_rows('ref/gt', kld=metrics.kld_from_logits(real['logits'][has],
                                                         ref['logits'][match[has]]),
                   fad=fad_floor, align=evalset.aligned_prob(clips['frames'], clips['log_mel']),
                   class_logits=real['logits'], labels=clips['labels'],
                   onset_detected=detected_real, onsets=onsets))
  out.update(_rows('ref/shuffled',
                   kld=metrics.kld_from_logits(real['logits'], real['logits'][shuffle]),
                   fad=fad_floor,
                   align=evalset.aligned_prob(clips['frames'], clips['log_mel'][shuffle]),
                   class_logits=real['logits'][shuffle], labels=clips['labels'],
                   onset_detected=[detected_real[j] for j in shuffle], onsets=onsets))
  out['ref/gt/kld_matched_clips'] = float(has.sum())
  # The audio-video offset in seconds: of the generated audio, of the real audio, of the real
  # audio moved a known SHIFTED_SECONDS later (to be read back) and of another clip's.
  late = sync_offset.shift_audio(clips['log_mel'],
                                 int(round(sync_offset.SHIFTED_SECONDS * frame_rate)))
  for prefix, mel in (('gen', generated), ('ref/gt', clips['log_mel']), ('ref/shifted', late),
                      ('ref/shuffled', clips['log_mel'][shuffle])):
    out.update(sync_offset.offset_keys(prefix, sync_offset.estimate_offsets(
        evalset.aligned_prob, clips['frames'], mel, frame_rate)))
  if 'flashing' in clips:
    out['ref/video_oracle/class_acc'] = video_oracle_class_acc(
        clips['labels'], clips['visible'], clips['flashing'])
  return out


# Which objectives each Table 3 experiment trains with: (MSA, MSD).
TABLE3_FLAGS = {'cavp': (False, False), 'msa': (True, False), 'msd': (False, True),
                'msa_msd': (True, True)}


# The protocol card (checkpoint_evaluation.protocol_card and the sampler's keys): how the
# numbers were made, in results.md's Protocol table.
PROTOCOL_KEYS = tuple(f'evaluate/{k}' for k in (
    'dataset', 'evaluator_id', 'embedding', 'embedding_dim', 'sample_rate', 'clip_seconds',
    'split', 'reference_split', 'retrieval_pooling', 'retrieval_scale', 'sampler',
    'sample_steps', 'guidance', 'guidance_interval', 'align_guidance',
    'vocoder', 'griffin_lim_iters', 'step', 'train_seed', 'seed', 'code_commit',
    'fad_embedding', 'fad_embedding_dim', 'fad_embedding_sample_rate',
    'fad_embedding_window_s', 'fad_embedding_hop_s'))


def _cell(results: dict, key: str, digits: int) -> str:
  value = results.get(key)
  return '—' if value is None else f'{value:.{digits}f}'


def cell_with_interval(results: dict, key: str, digits: int) -> str:
  """`_cell`, then its 95% interval over clips in brackets where the results have one."""
  low, high = results.get(f'{key}_ci95_low'), results.get(f'{key}_ci95_high')
  if low is None or high is None:
    return _cell(results, key, digits)
  return f'{_cell(results, key, digits)} [{low:.{digits}f}, {high:.{digits}f}]'


def _vocoder_name(r: dict) -> str:
  """How results `r` turned log-mels into waveforms, in words."""
  if r.get('evaluate/vocoder', 'griffin_lim') == 'neural':
    return "the dataset's neural vocoder"
  return f"Griffin-Lim ({r.get('evaluate/griffin_lim_iters', '?')} iterations)"


def results_markdown(results: dict, experiment: str) -> str:
  """results.md: the paper's Tables 1-3 layout for one evaluated workdir."""
  r = results
  gen_cols = [('kld', 'KLD ↓', 2), ('fad', 'FAD ↓', 2), ('align_acc', 'Align Acc ↑', 1),
              ('onset_f1@50ms', 'onset F1@50ms ↑', 1), ('onset_f1@100ms', 'onset F1@100ms ↑', 1),
              ('onset_precision@100ms', 'precision@100ms', 1),
              ('onset_recall@100ms', 'recall@100ms', 1), ('class_acc', 'class acc ↑', 1)]
  interval = guidance_lib.interval_text(r.get('evaluate/guidance_interval'))
  lines = [f"# Evaluation of {experiment}, checkpoint {r.get('evaluate/step')}", '',
           f"Sampler {r.get('evaluate/sampler')}, {r.get('evaluate/sample_steps')} steps, "
           f"guidance {r.get('evaluate/guidance')}{interval}; {int(r.get('gen/num_clips', 0))} "
           f"{r.get('evaluate/split', 'test')} videos, FAD against the real audio of the next "
           f"{int(r.get('gen/num_reference_clips', 0))}.", '',
           '## Video-to-audio generation (Table 1 layout)', '',
           '| audio | ' + ' | '.join(c[1] for c in gen_cols) + ' |',
           '|' + ' --- |' * (len(gen_cols) + 1)]
  for prefix, name in (('ref/gt', 'ground truth'),
                       ('ref/vocoded', 'ground truth through the vocoder'),
                       ('ref/shuffled', 'shuffled ground truth'),
                       ('gen', f'generated: {experiment}')):
    if prefix == 'ref/vocoded' and f'{prefix}/kld' not in r:
      continue  # Evaluated before the vocoder row existed.
    lines.append(f'| {name} | ' + ' | '.join(cell_with_interval(r, f'{prefix}/{c[0]}', c[2])
                                            for c in gen_cols) + ' |')
  lines += ['', 'Ground truth: KLD against a same-class clip of the disjoint reference half '
            f"({int(r.get('ref/gt/kld_matched_clips', 0))} clips matched); FAD of real vs "
            'real audio (the floor at this sample size). Through the vocoder: the real '
            f'log-mel to a waveform by {_vocoder_name(r)} and back, scored as the generated '
            'audio is: what the waveform path costs. Onsets: F1 of the detected onsets '
            "against the true ones within ±50 / ±100 ms (one-to-one); recall alone (CMMD's "
            'hit-rate) would reward audio that is onsets everywhere.', '']
  if 'gen/fad_ci95_low' in r:
    lines += ['In brackets: 95% bootstrap intervals over the generated clips (1000 resamples '
              f"of the clips with replacement). FAD-inf {_cell(r, 'gen/fad_inf', 2)} (FAD "
              f'extrapolated to infinitely many generated clips from {intervals.DRAWS_PER_SIZE} '
              'random subsets of each of 15 sizes, N/4 to N; FAD itself grows as the number '
              'of clips shrinks).', '']
  if 'gen/fad_onnx' in r:
    lines += [f"FAD in the user's embedding ({r.get('evaluate/fad_embedding')}): generated "
              f"{_cell(r, 'gen/fad_onnx', 2)}, ground truth {_cell(r, 'ref/gt/fad_onnx', 2)} "
              '(the real audio against the same reference: the floor).', '']
  if 'gen/memorised_share' in r:
    lines += ['Memorisation check: '
              f"{_cell(r, 'gen/memorised_share', 1)}% of the generated clips are nearer a "
              'training clip (of the first '
              f"{int(r.get('memorisation/num_train_clips', 0))}) than any reference test "
              f"clip's real audio is ({_cell(r, 'ref/gt/memorised_share', 1)}% of the real "
              "audio of the same videos); median distance to the nearest training clip over "
              f"that to the nearest test clip {_cell(r, 'gen/train_over_test_distance', 2)}. "
              'The most suspect clips beside their nearest training clips: '
              'plots/memorisation.png.', '']
  if 'gen/sync_offset_abs_s' in r:
    lines += ['Audio-video offset found by the alignment classifier (mean |offset| in seconds '
              f'over a grid of ±{sync_offset.MAX_SECONDS:g} s in {sync_offset.STEP_SECONDS:g} s '
              f"steps): generated {_cell(r, 'gen/sync_offset_abs_s', 2)}, ground truth "
              f"{_cell(r, 'ref/gt/sync_offset_abs_s', 2)}, ground truth moved "
              f'{sync_offset.SHIFTED_SECONDS:g} s late '
              f"{_cell(r, 'ref/shifted/sync_offset_s', 2)} (signed mean), shuffled "
              f"{_cell(r, 'ref/shuffled/sync_offset_abs_s', 2)}.", '']
  if 'ref/video_oracle/class_acc' in r:
    lines += ['Class accuracy reachable from the video alone: '
              f"{_cell(r, 'ref/video_oracle/class_acc', 1)}% (an oracle that sees which "
              'classes are on screen and which flash; a non-flashing sounding object looks '
              'like a silent one).', '']
  lines += [
            '## Retrieval (Table 2 layout)', '',
            '| direction | R@1 | R@5 | R@10 | median rank |', '| --- | --- | --- | --- | --- |']
  for d, name in (('v2a', 'video → audio'), ('a2v', 'audio → video')):
    lines.append(f'| {name} | ' + ' | '.join(
        cell_with_interval(r, f'retrieval/{d}_R@{k}', 2) for k in (1, 5, 10)) +
                 f" | {_cell(r, f'retrieval/median_rank_{d}', 0)} |")
  lines.append('| chance | ' + ' | '.join(_cell(r, f'retrieval/chance_R@{k}', 2)
                                         for k in (1, 5, 10)) + ' | — |')
  for prefix, name in CEILINGS:
    if f'{prefix}_R@1' in r:  # Evaluated before the ceilings existed: no row.
      lines.append(f'| {name}, either direction | ' + ' | '.join(
          _cell(r, f'{prefix}_R@{k}', 2) for k in (1, 5, 10)) + ' | — |')
  if 'retrieval/ceiling_R@1' in r:
    lines += ['', 'Ceilings: the exact expected R@k of an oracle that ranks the clips with the '
              "query's classes first (in random order), then the rest; it knows no timing. "
              'Timing-blind: it knows each clip\'s sounding and visible classes (on a prepared '
              'set without visible classes, its labelled classes: then it is the class-only '
              'ceiling); class-only: the label alone. Above a ceiling, the encoders know more '
              'of a clip than those classes.']
  msa, msd = TABLE3_FLAGS.get(experiment, (None, None))
  mark = {True: '✓', False: '✗', None: '?'}
  lines += ['', '## Table 3 row', '',
            '| MSA | MSD | KLD ↓ | FAD ↓ | Align Acc ↑ | R@1 | R@5 | R@10 |',
            '| --- | --- | --- | --- | --- | --- | --- | --- |',
            f"| {mark[msa]} | {mark[msd]} | {_cell(r, 'gen/kld', 2)} | {_cell(r, 'gen/fad', 2)}"
            f" | {_cell(r, 'gen/align_acc', 1)} | "
            + ' | '.join(_cell(r, f'retrieval/v2a_R@{k}', 2) for k in (1, 5, 10)) + ' |']
  if 'retrieval/ceiling_R@1' in r:
    lines += ['', 'Timing-blind ceiling of R@1 / R@5 / R@10: ' + ' / '.join(
        _cell(r, f'retrieval/ceiling_R@{k}', 2) for k in (1, 5, 10)) + '.']
  card = [(k, r[k]) for k in PROTOCOL_KEYS if k in r]
  if card:
    lines += ['', '## Protocol', '', '| field | value |', '| --- | --- |']
    lines += [f'| {k.split("/", 1)[1]} | {v} |' for k, v in card]
  lines += ['', '## The evaluators on real test clips', '',
            f"Audio classifier top-1 {_cell(r, 'eval/audio_classifier_acc', 1)}%; alignment "
            f"classifier {_cell(r, 'eval/align_classifier_acc', 1)}% balanced (real pairs "
            f"{_cell(r, 'eval/align_acc_real', 1)}%, shifted "
            f"{_cell(r, 'eval/align_acc_shift', 1)}%, segment-swapped "
            f"{_cell(r, 'eval/align_acc_segment_swap', 1)}%, swapped "
            f"{_cell(r, 'eval/align_acc_random_swap', 1)}%).", '']
  return '\n'.join(lines)
