"""Gives a silent video a soundtrack with the MSD denoiser of a trained workdir, or (with
--direction=a2v) a sound moving pictures with the a2v denoiser of bidirectional training.

  python -m gmscavp_jax.generate --workdir=/tmp/msa_msd --test_index=3 --output_dir=/tmp/gen
  python -m gmscavp_jax.generate --workdir=/tmp/msa_msd --video=clip.mp4 --output_dir=/tmp/gen
  python -m gmscavp_jax.generate --workdir=/tmp/msa_msd --videos=DIR --output_dir=/tmp/gen
  python -m gmscavp_jax.generate --direction=a2v --workdir=/tmp/msa_msd_bi --test_index=3 \
      --output_dir=/tmp/gen  # or --audio=sound.wav, or --video=clip.mp4 (its audio track)

v2a: the video is decoded (PyAV) to the config's frame rate and size. A clip of exactly the
training length (from --start_seconds, for --duration or to the end) writes NAME.wav
(audio by --vocoder: the dataset's neural vocoder once it is trained, else Griffin-Lim;
evaluators/vocoders.py), NAME_spectrogram.png (generated beside the real log-mel, when the clip
has audio) and NAME.mp4 (the video with the generated soundtrack). Any other length, however
long, gets a whole soundtrack, NAME.wav and NAME.mp4, from overlapping windows that each
continue the previous one (inference/long_video.py), streamed: memory does not grow with the
length (--schedule=two_pass samples the windows in two batched passes instead of one after
another; docs/generation.md). --videos=DIR does that for every video under DIR
(recursively), windows of up to --batch videos sampled together, resumable (finished files
are skipped), unreadable files listed with their reason in OUTPUT_DIR/report.json. a2v:
writes NAME_frames.mp4 (generated low-resolution frames, upscaled, beside the real ones when
known, with the audio) and NAME_strip.png. Sampler flags default to the config's eval.*
settings (a2v: a2v.guidance).
"""

import os

from absl import app
from absl import flags

from gmscavp_jax import cli
from gmscavp_jax.core import config_io
from gmscavp_jax.inference import audio_to_video
from gmscavp_jax.inference import soundtrack_folder
from gmscavp_jax.inference import video_to_audio

_WORKDIR = flags.DEFINE_string('workdir', None, 'Workdir of a training run.')
_DIRECTION = flags.DEFINE_enum('direction', 'v2a', ['v2a', 'a2v'],
                               'v2a: audio for a video; a2v: frames for a sound.')
_VIDEO = flags.DEFINE_string('video', None, 'An mp4 (or any video PyAV decodes); a2v uses '
                             'its audio track.')
_AUDIO = flags.DEFINE_string('audio', None, 'a2v only: a WAV (or any audio PyAV decodes).')
_VIDEOS = flags.DEFINE_string('videos', None, 'v2a: a folder; every video under it gets a '
                              'soundtrack (OUTPUT_DIR mirrors its layout).')
_TEST_INDEX = flags.DEFINE_integer('test_index', None, 'A clip of the configured test split.')
_OUTPUT_DIR = flags.DEFINE_string('output_dir', None, 'Where the written files go.')
_SAMPLER_FLAGS = cli.define_sampler_flags()
_START = flags.DEFINE_float('start_seconds', 0.0, 'Where in --video (or each of --videos) '
                            'the soundtrack starts.')
_DURATION = flags.DEFINE_float('duration', None, 'Seconds of --video (or each of --videos) '
                               'to give a soundtrack (default: to the end).', lower_bound=0.0)
_OVERLAP = flags.DEFINE_float('overlap_seconds', None, 'Overlap of consecutive windows of a '
                              'long video (default: a quarter of the clip).')
_SCHEDULE = flags.DEFINE_enum(
    'schedule', 'sequential', ['sequential', 'two_pass'], 'How the windows of a long video '
    'are sampled: sequential (each continues the previous, one call per window) or two_pass '
    '(even windows in one batched call, then odd ones inpainted from both neighbours).')
_BATCH = flags.DEFINE_integer('batch', None, 'Sampler rows: videos whose windows share a call '
                              '(--schedule=two_pass: windows per call; default: the config '
                              'eval.batch_size).', lower_bound=1)
_SEED = flags.DEFINE_integer('seed', 0, 'Seed of the sampling noise.')
_ALIGN_GUIDANCE = flags.DEFINE_float(
    'align_guidance', 0.0, 'v2a: double guidance, the scale of the alignment guide\'s gradient '
    'added to classifier-free guidance (0 = off; the guide trains once per dataset).',
    lower_bound=0.0)
_VOCODER = cli.define_vocoder_flag()
_EVALUATOR_DIR = cli.define_evaluator_dir_flag()
flags.mark_flags_as_required(['workdir', 'output_dir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if _DIRECTION.value == 'a2v':
    sources = [_AUDIO.value, _VIDEO.value, _TEST_INDEX.value]
    if sum(s is not None for s in sources) != 1:
      raise app.UsageError('give exactly one of --audio=FILE, --video=FILE or --test_index=N')
  elif _AUDIO.value is not None:
    raise app.UsageError('--audio is for --direction=a2v; v2a takes --video or --test_index')
  elif sum(s is not None for s in (_VIDEO.value, _VIDEOS.value, _TEST_INDEX.value)) != 1:
    raise app.UsageError('give exactly one of --video=FILE, --videos=DIR or --test_index=N')
  if _DIRECTION.value == 'a2v' and (_ALIGN_GUIDANCE.value or _VIDEOS.value is not None):
    raise app.UsageError('--align_guidance and --videos are for --direction=v2a')
  cli.run_or_explain(cli.check_paths, dirs={'workdir': _WORKDIR.value, 'videos': _VIDEOS.value},
                     write_dirs={'output_dir': _OUTPUT_DIR.value},
                     files={'video': _VIDEO.value, 'audio': _AUDIO.value})
  cli.setup()
  v2a_args = {**cli.sampler_args(_SAMPLER_FLAGS), 'align_guidance': _ALIGN_GUIDANCE.value,
              'vocoder': _VOCODER.value, 'evaluator_dir': _EVALUATOR_DIR.value}
  if _DIRECTION.value == 'a2v':
    out = cli.run_or_explain(
        audio_to_video.generate, _WORKDIR.value, _OUTPUT_DIR.value, audio=_AUDIO.value,
        video=_VIDEO.value, test_index=_TEST_INDEX.value, start_seconds=_START.value,
        seed=_SEED.value, **cli.sampler_args(_SAMPLER_FLAGS))
    print(f"checkpoint {out['step']}: wrote {out['mp4']}, {out['png']} "
          f"({out['image_size']}x{out['image_size']} frames)")
    if 'psnr' in out:
      print(f"PSNR against the real frames: {out['psnr']:.2f} dB")
    return
  long_args = dict(overlap_seconds=_OVERLAP.value, schedule=_SCHEDULE.value,
                   start_seconds=_START.value,
                   duration=_DURATION.value, seed=_SEED.value, **v2a_args)
  if _VIDEOS.value is not None:
    _folder(long_args)
    return
  if _VIDEO.value is not None and not cli.run_or_explain(
      soundtrack_folder.is_one_clip, cli.run_or_explain(config_io.load_config, _WORKDIR.value),
      _VIDEO.value, _START.value, _DURATION.value):
    out = cli.run_or_explain(soundtrack_folder.soundtrack_video, _WORKDIR.value, _VIDEO.value,
                             _OUTPUT_DIR.value, batch=_BATCH.value, **long_args)
    print(f"wrote {out['wav']} and {out['mp4']}: {out['seconds']:.1f} s of audio from "
          f"{out['windows']} windows ({out['vocoder']} vocoder)")
    return
  out = cli.run_or_explain(
      video_to_audio.generate, _WORKDIR.value, _OUTPUT_DIR.value, video=_VIDEO.value,
      test_index=_TEST_INDEX.value, start_seconds=_START.value, seed=_SEED.value, **v2a_args)
  print(f"checkpoint {out['step']}: wrote {out['wav']}, {out['png']}, {out['mp4']} "
        f"({out['vocoder']} vocoder)")
  print(f"onsets detected in the generated audio (s): "
        f"{', '.join(f'{t:.2f}' for t in out['detected_onsets']) or 'none'}")
  if 'true_onsets' in out:
    print(f"true onsets (s): {', '.join(f'{t:.2f}' for t in out['true_onsets']) or 'none'}; "
          f"hit-rate at +-100 ms {out['onset_hit@100ms']:.1f}%")


def _folder(long_args: dict) -> None:
  """--videos=DIR: every video under it, with a summary and the report's path."""
  videos = cli.run_or_explain(soundtrack_folder.find_videos, _VIDEOS.value)
  batch = _BATCH.value or cli.run_or_explain(config_io.load_config, _WORKDIR.value).eval.batch_size
  report = cli.run_or_explain(soundtrack_folder.soundtrack_videos, _WORKDIR.value, videos,
                              _VIDEOS.value, _OUTPUT_DIR.value, batch=batch, **long_args)
  print(f"{len(videos)} videos: {len(report['done'])} done now, {len(report['skipped'])} "
        f"skipped (finished or failed before), {len(report['failed'])} failed; "
        f"{report['windows']} windows in {report['seconds']:.1f} s "
        f"({report['windows_per_second']:.2f} windows/s); report: "
        f"{os.path.join(_OUTPUT_DIR.value, soundtrack_folder.REPORT)}")
  for failure in report['failed']:
    print(f"  failed: {failure['video']}: {failure['reason']}")


if __name__ == '__main__':
  cli.run(main)
