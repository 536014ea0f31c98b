"""Whole soundtracks for one long video or a folder of videos (the generate CLI's --video
of any length and --videos=DIR): `long_video.run` with progress, resumption and a report.

For each video IN/sub/name.ext, OUT/sub/name.wav and OUT/sub/name.mp4 (the video as the model
saw it, with the soundtrack). Files appear only when complete (written as *.partial, then
renamed), so a rerun skips what is done; videos that cannot be read are listed with their
reason in OUT/report.json, and a rerun skips them too unless the file changed.
"""

import json
import os
import time

from absl import logging
import tqdm

from gmscavp_jax.core import config_io
from gmscavp_jax.data import media
from gmscavp_jax.data import media_stream
from gmscavp_jax.inference import long_video
from gmscavp_jax.inference import video_to_audio
from gmscavp_jax.infra import errors

# Containers PyAV (FFmpeg) reads that hold video; other files in the folder are ignored.
VIDEO_EXTENSIONS = ('.mp4', '.m4v', '.mov', '.mkv', '.webm', '.avi', '.flv', '.mpg', '.mpeg',
                    '.ts', '.3gp', '.ogv', '.wmv')
REPORT = 'report.json'


def find_videos(folder: str) -> list[str]:
  """Video files under `folder` (recursively, by extension), sorted."""
  if not os.path.isdir(folder):
    raise errors.ConfigError(f'--videos={folder}: expected a folder of videos')
  found = []
  for root, _, names in os.walk(folder):
    found += [os.path.join(root, n) for n in names
              if os.path.splitext(n)[1].lower() in VIDEO_EXTENSIONS]
  return sorted(found)


def _signature(path: str) -> list:
  stat = os.stat(path)
  return [stat.st_size, stat.st_mtime_ns]


def _previous_failures(output_dir: str) -> dict:
  path = os.path.join(output_dir, REPORT)
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    return {e['video']: e for e in json.load(f).get('failed', [])}


def _job(video: str, folder: str, output_dir: str, start: float, duration) -> long_video.Job:
  base = os.path.join(output_dir, os.path.splitext(os.path.relpath(video, folder))[0])
  return long_video.Job(video, base + '.wav', base + '.mp4', start, duration)


def soundtrack_videos(workdir: str, videos: list[str], folder: str, output_dir: str, *,
                      batch: int, overlap_seconds: float | None = None,
                      schedule: str = 'sequential', start_seconds: float = 0.0,
                      duration: float | None = None, seed: int = 0, vocoder: str = 'auto',
                      evaluator_dir: str | None = None, **sampler_args) -> dict:
  """Soundtracks for `videos` (paths under `folder`) into `output_dir`; returns the report.

  `vocoder` and `evaluator_dir` choose the vocoder (video_to_audio.Soundtracker); `schedule`
  is long_video.run's ('sequential': `batch` videos a sampler call; 'two_pass': `batch`
  windows a call).

  Report: 'done' (videos finished now), 'skipped' (finished before, or failed before with
  the same size and mtime), 'failed' ([{'video', 'reason', 'signature'}]), 'windows',
  'audio_seconds', 'seconds' (wall time of this call), 'windows_per_second'; also written
  to OUT/report.json.
  """
  t0 = time.perf_counter()
  os.makedirs(output_dir, exist_ok=True)
  failed_before = _previous_failures(output_dir)
  config = config_io.load_config(workdir)
  geometry = long_video.windows(config, overlap_seconds)
  long_video.check_schedule(schedule, geometry)
  report = {'done': [], 'skipped': [], 'failed': [], 'windows': 0, 'audio_seconds': 0.0}

  def fail(job, error):
    logging.warning('skipping %s', error)
    report['failed'].append({'video': job.video, 'reason': error.reason,
                             'signature': _signature(job.video)})

  jobs, total = [], 0
  for video in videos:
    job = _job(video, folder, output_dir, start_seconds, duration)
    old = failed_before.get(video)
    if (os.path.exists(job.wav) and os.path.exists(job.mp4)) or (
        old and old.get('signature') == _signature(video)):
      report['skipped'].append(video)
      if old:
        report['failed'].append(old)
      continue
    try:
      job.video_seconds = media_stream.probe_duration(video)
    except media.MediaError as e:
      fail(job, e)
      continue
    total += long_video.num_windows(geometry, job)
    jobs.append(job)
  if jobs:
    soundtracker = video_to_audio.Soundtracker(workdir, vocoder, evaluator_dir)
    with tqdm.tqdm(total=total, unit='window', desc='soundtracks', smoothing=0.1) as bar:

      def done(job, info):
        report['done'].append(job.video)
        report['windows'] += info['windows']
        report['audio_seconds'] += info['seconds']
        bar.set_postfix(videos=f"{len(report['done'])}/{len(jobs)}")

      rows = batch if schedule == 'two_pass' else min(batch, len(jobs))
      long_video.run(soundtracker, jobs, batch=rows, overlap_seconds=overlap_seconds,
                     schedule=schedule, seed=seed, on_window=bar.update,
                     on_done=done, on_failed=fail, **sampler_args)
  report['seconds'] = time.perf_counter() - t0
  report['windows_per_second'] = report['windows'] / report['seconds']
  with open(os.path.join(output_dir, REPORT), 'w') as f:
    json.dump(report, f, indent=1)
  return report


def is_one_clip(config, video: str, start_seconds: float, duration: float | None) -> bool:
  """Whether the requested span of `video` is exactly one of `config`'s clips long (then the
  single-clip path, with its spectrogram and onsets, applies). Raises media.MediaError."""
  d = config.data
  available = media_stream.probe_duration(video) - start_seconds
  return available > 0 and long_video.span_frames(d.fps, available, duration) == d.num_frames


def soundtrack_video(workdir: str, video: str, output_dir: str, *,
                     overlap_seconds: float | None = None, schedule: str = 'sequential',
                     batch: int | None = None, start_seconds: float = 0.0,
                     duration: float | None = None, seed: int = 0, vocoder: str = 'auto',
                     evaluator_dir: str | None = None, **sampler_args) -> dict:
  """A whole soundtrack for one video of any length: OUT/name.wav and OUT/name.mp4 (made
  anew, even if they exist). Returns {'wav', 'mp4', 'windows', 'seconds' (of audio),
  'vocoder'}; `vocoder` and `evaluator_dir` choose it (video_to_audio.Soundtracker);
  `schedule` and `batch` are long_video.run_one's.

  Raises media.MediaError if the video cannot be read.
  """
  job = _job(video, os.path.dirname(video), output_dir, start_seconds, duration)
  config = config_io.load_config(workdir)
  geometry = long_video.windows(config, overlap_seconds)  # Checked before the restore.
  long_video.check_schedule(schedule, geometry)
  job.video_seconds = media_stream.probe_duration(video)
  total = long_video.num_windows(geometry, job)
  soundtracker = video_to_audio.Soundtracker(workdir, vocoder, evaluator_dir)
  with tqdm.tqdm(total=total, unit='window', desc=os.path.basename(video)) as bar:
    info = long_video.run_one(soundtracker, job, overlap_seconds=overlap_seconds,
                              schedule=schedule, batch=batch, seed=seed,
                              on_window=bar.update, **sampler_args)
  return {'wav': job.wav, 'mp4': job.mp4, 'vocoder': soundtracker.vocoder.name, **info}
