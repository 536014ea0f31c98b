"""Benchmark of whole-video soundtracks (issue 19): a long mp4 made of test clips back to
back gets a soundtrack; its joins, onsets and memory are measured against per-clip sampling
and against naive concatenation of independent windows.

  python -m gmscavp_jax.tools.long_video_bench --workdir=/tmp/msa_msd --out=/tmp/long \
      --num_clips=150        # 150 runlocal test clips = a 5-minute video

Writes OUT/long.mp4 (with the true audio), OUT/soundtrack/long.{wav,mp4}, OUT/bench.json and
OUT/joins.png. Joins: the mean absolute log-mel change between consecutive frames of the
re-analysed soundtrack at the window joins (the first and last frame of each overlap) against
everywhere else; the same for windows sampled independently and concatenated. Onset F1 at
+-100 ms against the clips' true onsets, for the long soundtrack and for each clip sampled on
its own, with a bootstrap 95% interval over clips. Peak memory: `--memory_probe` reruns the
soundtrack for 1/5, all and twice the clips in child processes (ru_maxrss).

`--compare_schedules` measures only long_video's two schedules on that video, one restored
model for both: a first (compiling) run of each, then `--repeats` runs of each interleaved
(sequential, two_pass, sequential, ...) so that a loaded machine slows both alike. Per
schedule: windows, sampler calls and rows, seconds (median and best of the repeats; the
sampler's and the vocoder's share), and the joins as above. Writes OUT/schedules.json.

  python -m gmscavp_jax.tools.long_video_bench --workdir=/tmp/msa_msd --out=/tmp/sched \
      --num_clips=20 --compare_schedules --repeats=2
"""

import json
import os
import resource
import subprocess
import sys
import time

from absl import flags
import numpy as np

from gmscavp_jax import cli
from gmscavp_jax.core import config_io
from gmscavp_jax.data import audio
from gmscavp_jax.data import media_stream
from gmscavp_jax.data import media_writing
from gmscavp_jax.data import pipeline
from gmscavp_jax.data import synthetic
from gmscavp_jax.evaluators import generation
from gmscavp_jax.evaluators import metrics
from gmscavp_jax.inference import long_video
from gmscavp_jax.inference import soundtrack_folder
from gmscavp_jax.inference import video_to_audio
from gmscavp_jax.infra import plotting

_WORKDIR = flags.DEFINE_string('workdir', None, 'A trained msa_msd workdir.')
_OUT = flags.DEFINE_string('out', None, 'Output folder.')
_NUM_CLIPS = flags.DEFINE_integer('num_clips', 150, 'Test clips put back to back.')
_SCENE = flags.DEFINE_enum('scene', 'clips', ['clips', 'continuous'],
                           "'clips': test clips back to back; 'continuous': one long scene.")
_MEMORY = flags.DEFINE_bool('memory_probe', True, 'Measure peak memory at three lengths.')
_COMPARE = flags.DEFINE_bool('compare_schedules', False, 'Only time the sequential and '
                             'two_pass schedules against each other (OUT/schedules.json).')
_REPEATS = flags.DEFINE_integer('repeats', 2, '--compare_schedules: timed runs of each.',
                                lower_bound=1)
_VOCODER = cli.define_vocoder_flag()
_EVALUATOR_DIR = cli.define_evaluator_dir_flag()
_ONLY_SOUNDTRACK = flags.DEFINE_string('only_soundtrack', None,
                                       'Internal: soundtrack this video and print peak RSS.')
flags.mark_flags_as_required(['workdir', 'out'])


def make_long_video(config, path: str, num_clips: int,
                    scene: str = 'clips') -> tuple[np.ndarray, np.ndarray, list[float]]:
  """Writes a video of num_clips clip lengths with its true audio to `path`; returns its
  frames (n*T,H,W,3), waveform (S,) and true onsets (s).

  scene 'clips': test clips 0..n-1 back to back (a cut every clip); 'continuous': one
  synthetic scene of the same world that lasts the whole time (no cuts).
  """
  d = config.data
  if scene == 'continuous':
    world = synthetic.SyntheticAVSource(
        split='test', num_clips=1, seed=d.seed, num_classes=d.num_classes,
        num_frames=d.num_frames * num_clips, fps=d.fps, image_size=d.image_size,
        sample_rate=config.audio.sample_rate, max_onsets=64 * num_clips)[0]
    frames, wave = world['frames'], world['waveform']
    onsets = [float(t) for t in world['onsets'][:int(world['num_onsets'])]]
  else:
    source = pipeline.make_source(config, 'test')
    length = d.num_frames / d.fps
    records = [source[i] for i in range(num_clips)]
    frames = np.concatenate([r['frames'] for r in records])
    wave = np.concatenate([r['waveform'] for r in records])
    onsets = [i * length + float(t) for i, r in enumerate(records)
              for t in r['onsets'][:int(r['num_onsets'])]]
  media_writing.write_video(path, frames, d.fps, waveform=wave,
                            sample_rate=config.audio.sample_rate)
  return frames, wave, onsets


def reanalyse(config, wav: str) -> np.ndarray:
  """Log-mel (Ta,F) of a WAV file."""
  wave = np.concatenate(list(media_stream.iter_wav(wav, 1 << 20)))
  return np.asarray(audio.log_mel_from_config(wave[None], config.audio))[0]


def jumps(mel: np.ndarray) -> np.ndarray:
  """(Ta-1,) mean absolute change of the log-mel between consecutive frames."""
  return np.abs(np.diff(mel, axis=0)).mean(axis=1)


def join_stats(change: np.ndarray, joins: np.ndarray) -> dict:
  """Mean change at the join frames (+-1) against all other frames."""
  at = np.zeros(change.shape, bool)
  for j in joins:
    at[max(j - 1, 0):j + 1] = True
  return {'at_joins': float(change[at].mean()), 'inside': float(change[~at].mean()),
          'ratio': float(change[at].mean() / change[~at].mean())}


def f1_interval(detected: list, reference: list, seed: int = 0) -> dict:
  """Onset F1@100ms summed over clips, with a bootstrap 95% interval over clips."""
  f1 = metrics.onset_hit_rate(detected, reference, 0.1)['f1']
  rng, n, boots = np.random.default_rng(seed), len(detected), []
  for _ in range(1000):
    pick = rng.integers(0, n, n)
    boots.append(metrics.onset_hit_rate([detected[i] for i in pick],
                                        [reference[i] for i in pick], 0.1)['f1'])
  return {'f1': f1, 'ci95': [float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))]}


def per_clip(detected_all: np.ndarray, onsets: list, length: float, n: int):
  """Splits one timeline's onsets into clips of `length` seconds, times relative to each."""
  det = [detected_all[(detected_all >= i * length) & (detected_all < (i + 1) * length)]
         - i * length for i in range(n)]
  ref = [np.asarray([t - i * length for t in onsets if i * length <= t < (i + 1) * length])
         for i in range(n)]
  return det, ref


class _Uninformed:
  """A Soundtracker whose windows are told nothing of the previous one (mask 0)."""

  def __init__(self, soundtracker):
    self.config, self._soundtracker = soundtracker.config, soundtracker

  def generate_batch(self, frames, *, known_mask, **kwargs):
    return self._soundtracker.generate_batch(frames, known_mask=known_mask * 0.0, **kwargs)

  def vocode(self, mel, seed=0):
    return self._soundtracker.vocode(mel, seed)


class _Counting:
  """A Soundtracker that counts its sampler and vocoder calls, rows and seconds."""

  def __init__(self, soundtracker):
    self.config, self._soundtracker = soundtracker.config, soundtracker
    self.reset()

  def reset(self):
    self.counts = {'sampler_calls': 0, 'sampler_rows': 0, 'sampler_seconds': 0.0,
                   'vocoder_calls': 0, 'vocoder_seconds': 0.0}

  def generate_batch(self, frames, **kwargs):
    t0 = time.perf_counter()
    mels = self._soundtracker.generate_batch(frames, **kwargs)
    self.counts['sampler_seconds'] += time.perf_counter() - t0
    self.counts['sampler_calls'] += 1
    self.counts['sampler_rows'] += len(frames)
    return mels

  def vocode(self, mel, seed=0):
    t0 = time.perf_counter()
    waves = self._soundtracker.vocode(mel, seed)
    self.counts['vocoder_seconds'] += time.perf_counter() - t0
    self.counts['vocoder_calls'] += 1
    return waves


def seam_changes(change: np.ndarray, starts: np.ndarray, overlap: int) -> np.ndarray:
  """(J,) mean of `jumps`' change (Ta-1,) at each join's two ends (+-1 frame): the overlaps
  that begin at log-mel frames `starts` (J,) and last `overlap` frames."""
  return np.asarray([change[[j for j in (s - 1, s, s + overlap - 1, s + overlap)
                             if j < len(change)]].mean() for s in starts])


def compare_schedules(soundtracker, video: str, out: str, repeats: int,
                      mel_true: np.ndarray) -> dict:
  """Times long_video.run_one's schedules on `video` (see the module docstring); the true
  log-mel (Ta,F) of the video gives the joins' reference. Returns schedules.json's dict."""
  config, counting = soundtracker.config, _Counting(soundtracker)
  geometry = long_video.windows(config)
  result = {'clip_frames': geometry.frames, 'hop_frames': geometry.hop,
            'batch': config.eval.batch_size}
  runs, seams = {name: [] for name in long_video.SCHEDULES}, {}
  for i in range(1 + repeats):  # Run 0 of each compiles.
    for name in long_video.SCHEDULES:
      folder = os.path.join(out, name)
      os.makedirs(folder, exist_ok=True)
      job = long_video.Job(video, os.path.join(folder, 'long.wav'),
                           os.path.join(folder, 'long.mp4'))
      counting.reset()
      t0 = time.perf_counter()
      info = long_video.run_one(counting, job, schedule=name)
      runs[name].append({'seconds': time.perf_counter() - t0, **counting.counts})
      print(f'run {i} {name}: {runs[name][-1]}', flush=True)
      if i == 0:  # Every run of a schedule draws the same noise: one measure of its joins.
        change, mpf = jumps(reanalyse(config, job.wav)), geometry.mel_per_frame
        starts = np.arange(1, info['windows']) * geometry.hop * mpf
        joins = np.concatenate([starts, starts + geometry.overlap * mpf])
        joins = joins[joins < len(change)]
        seams[name] = seam_changes(change, starts, geometry.overlap * mpf)
        result[name] = {'windows': info['windows'], 'audio_seconds': info['seconds'],
                        'joins': join_stats(change, joins),  # and by the window before:
                        'join_change_after_even_odd': [float(seams[name][p::2].mean())
                                                       for p in (0, 1)]}
        result['joins_of_ground_truth'] = join_stats(jumps(mel_true[:len(change) + 1]), joins)
  for name, timed in runs.items():
    first, rest = timed[0], timed[1:]
    result[name].update(
        {k: first[k] for k in ('sampler_calls', 'sampler_rows', 'vocoder_calls')},
        first_run_seconds=first['seconds'], runs=rest,
        **{f'{k}_median': float(np.median([r[k] for r in rest]))
           for k in ('seconds', 'sampler_seconds', 'vocoder_seconds')},
        seconds_best=min(r['seconds'] for r in rest))
  # Per join (both ends of an overlap, +-1 frame), two_pass's change minus sequential's, with
  # a bootstrap 95% interval over joins: 0 inside it = joins as smooth as sequential's.
  diff, rng = seams['two_pass'] - seams['sequential'], np.random.default_rng(0)
  boots = [diff[rng.integers(0, diff.size, diff.size)].mean() for _ in range(2000)]
  result['join_change_two_pass_minus_sequential'] = {
      'mean': float(diff.mean()), 'ci95': [float(np.percentile(boots, q)) for q in (2.5, 97.5)],
      'joins': int(diff.size)}
  result['speedup_median'] = (result['sequential']['seconds_median']
                              / result['two_pass']['seconds_median'])
  return result


def peak_rss_mb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv):
  del argv
  cli.setup()
  workdir, out = _WORKDIR.value, _OUT.value
  if _ONLY_SOUNDTRACK.value:
    soundtrack_folder.soundtrack_video(workdir, _ONLY_SOUNDTRACK.value, out,
                                       vocoder=_VOCODER.value,
                                       evaluator_dir=_EVALUATOR_DIR.value)
    print(json.dumps({'peak_rss_mb': peak_rss_mb()}))
    return
  config = config_io.load_config(workdir)
  os.makedirs(out, exist_ok=True)
  n, length = _NUM_CLIPS.value, config.data.num_frames / config.data.fps
  video = os.path.join(out, 'long.mp4')
  frames, true_wave, onsets = make_long_video(config, video, n, _SCENE.value)
  mel_true = np.asarray(audio.log_mel_from_config(true_wave[None], config.audio))[0]
  rate = generation.frame_rate(config)
  report = {'num_clips': n, 'video_seconds': n * length, 'scene': _SCENE.value}
  if _COMPARE.value:
    soundtracker = video_to_audio.Soundtracker(workdir, _VOCODER.value, _EVALUATOR_DIR.value)
    report.update(vocoder=soundtracker.vocoder.name, load_start=os.getloadavg(),
                  **compare_schedules(soundtracker, video, out, _REPEATS.value, mel_true))
    report['load_end'] = os.getloadavg()
    with open(os.path.join(out, 'schedules.json'), 'w') as f:
      json.dump(report, f, indent=1)
    print(json.dumps(report, indent=1))
    return

  t0 = time.perf_counter()
  info = soundtrack_folder.soundtrack_video(workdir, video, os.path.join(out, 'soundtrack'),
                                            vocoder=_VOCODER.value,
                                            evaluator_dir=_EVALUATOR_DIR.value)
  report['long'] = {'seconds': time.perf_counter() - t0, 'windows': info['windows'],
                    'audio_seconds': info['seconds']}
  mel_long = reanalyse(config, info['wav'])
  geometry = long_video.windows(config)
  mpf = geometry.mel_per_frame
  starts = np.arange(1, info['windows']) * geometry.hop * mpf
  joins = np.concatenate([starts, starts + geometry.overlap * mpf])
  joins = joins[joins < len(mel_long) - 1]
  report['long']['joins'] = join_stats(jumps(mel_long), joins)
  report['long']['joins_of_ground_truth'] = join_stats(jumps(mel_true), joins)
  det, ref = per_clip(metrics.detect_onsets(mel_long, rate), onsets, length, n)
  report['long']['onset'] = f1_interval(det, ref)

  # The same windows and cross-fades, each sampled on its own (nothing inpainted).
  soundtracker = video_to_audio.Soundtracker(workdir, _VOCODER.value, _EVALUATOR_DIR.value)
  report['vocoder'] = soundtracker.vocoder.name
  blind = _Uninformed(soundtracker)
  job = long_video.Job(video, *(os.path.join(out, 'uninformed', 'long' + e)
                                for e in ('.wav', '.mp4')))
  os.makedirs(os.path.dirname(job.wav), exist_ok=True)
  long_video.run(blind, [job], batch=1)
  mel_blind = reanalyse(config, job.wav)
  report['long_without_inpainting'] = {
      'joins': join_stats(jumps(mel_blind), joins),
      'onset': f1_interval(*per_clip(metrics.detect_onsets(mel_blind, rate), onsets, length, n))}

  # Each clip length on its own (for 'clips': the test clips), and those windows
  # concatenated (the naive long soundtrack).
  t0 = time.perf_counter()
  mels = soundtracker.generate_batch(frames.reshape((n, -1) + frames.shape[1:]))
  waves = soundtracker.vocode(mels)
  report['per_clip'] = {'seconds': time.perf_counter() - t0}
  mel_naive = np.asarray(audio.log_mel_from_config(waves.reshape(1, -1), config.audio))[0]
  ta = mels.shape[1]
  clip_starts = np.arange(1, n) * ta
  report['per_clip']['joins_of_concatenation'] = join_stats(jumps(mel_naive), clip_starts)
  report['per_clip']['joins_of_ground_truth'] = join_stats(jumps(mel_true), clip_starts)
  det = [metrics.detect_onsets(np.asarray(m), rate) for m in
         np.asarray(audio.log_mel_from_config(waves, config.audio))]
  report['per_clip']['onset'] = f1_interval(det, ref)

  if _MEMORY.value:
    report['peak_rss_mb'] = {}
    for clips in (max(n // 5, 2), n, 2 * n):
      short = os.path.join(out, f'long_{clips}.mp4')
      make_long_video(config, short, clips, _SCENE.value)
      result = subprocess.run(
          [sys.executable, '-m', 'gmscavp_jax.tools.long_video_bench', f'--workdir={workdir}',
           f'--out={os.path.join(out, "memory")}', f'--only_soundtrack={short}',
           f'--vocoder={report["vocoder"]}'] +
          ([f'--evaluator_dir={_EVALUATOR_DIR.value}'] if _EVALUATOR_DIR.value else []),
          check=True, capture_output=True, text=True)
      rss = json.loads(result.stdout.strip().splitlines()[-1])['peak_rss_mb']
      report['peak_rss_mb'][f'{clips * length:g} s'] = rss

  view = slice(0, min(len(mel_long), len(mel_naive), int(6 * length * rate)))
  plotting.spectrograms(mel_long[None, view], os.path.join(out, 'joins.png'),
                        f'whole-video soundtrack (windows overlap {geometry.overlap} frames)',
                        real=mel_naive[None, view], frame_rate=rate)
  with open(os.path.join(out, 'bench.json'), 'w') as f:
    json.dump(report, f, indent=1)
  print(json.dumps(report, indent=1))


if __name__ == '__main__':
  cli.run(main)
