"""Gives a silent video a soundtrack with the MSD denoiser of a trained workdir, or (with
--direction=a2v) a sound moving pictures with the a2v denoiser of bidirectional training.

  python -m gmscavp_jax.generate --workdir=/tmp/msa_msd --test_index=3 --output_dir=/tmp/gen
  python -m gmscavp_jax.generate --workdir=/tmp/msa_msd --video=clip.mp4 --output_dir=/tmp/gen
  python -m gmscavp_jax.generate --direction=a2v --workdir=/tmp/msa_msd_bi --test_index=3 \
      --output_dir=/tmp/gen  # or --audio=sound.wav, or --video=clip.mp4 (its audio track)

v2a: the video is decoded (PyAV) to the config's frame rate, size and clip length; a longer
video uses the window starting at --start_seconds. Writes NAME.wav (Griffin-Lim audio),
NAME_spectrogram.png (generated beside the real log-mel, when the clip has audio) and
NAME.mp4 (the video with the generated soundtrack). a2v: writes NAME_frames.mp4 (generated
low-resolution frames, upscaled, beside the real ones when known, with the audio) and
NAME_strip.png. Sampler flags default to the config's eval.* settings (a2v: a2v.guidance).
"""

from absl import app
from absl import flags

from gmscavp_jax.inference import audio_to_video
from gmscavp_jax import cli
from gmscavp_jax.inference import video_to_audio

_WORKDIR = flags.DEFINE_string('workdir', None, 'Workdir of a training run.')
_DIRECTION = flags.DEFINE_enum('direction', 'v2a', ['v2a', 'a2v'],
                               'v2a: audio for a video; a2v: frames for a sound.')
_VIDEO = flags.DEFINE_string('video', None, 'An mp4 (or any video PyAV decodes); a2v uses '
                             'its audio track.')
_AUDIO = flags.DEFINE_string('audio', None, 'a2v only: a WAV (or any audio PyAV decodes).')
_TEST_INDEX = flags.DEFINE_integer('test_index', None, 'A clip of the configured test split.')
_OUTPUT_DIR = flags.DEFINE_string('output_dir', None, 'Where the written files go.')
_SAMPLER_FLAGS = cli.define_sampler_flags()
_START = flags.DEFINE_float('start_seconds', 0.0, 'Start of the clip window in --video.')
_SEED = flags.DEFINE_integer('seed', 0, 'Seed of the sampling noise.')
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
  elif (_VIDEO.value is None) == (_TEST_INDEX.value is None):
    raise app.UsageError('give exactly one of --video=FILE or --test_index=N')
  cli.setup()
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
  out = cli.run_or_explain(
      video_to_audio.generate, _WORKDIR.value, _OUTPUT_DIR.value, video=_VIDEO.value,
      test_index=_TEST_INDEX.value, start_seconds=_START.value, seed=_SEED.value,
      **cli.sampler_args(_SAMPLER_FLAGS))
  print(f"checkpoint {out['step']}: wrote {out['wav']}, {out['png']}, {out['mp4']}")
  print(f"onsets detected in the generated audio (s): "
        f"{', '.join(f'{t:.2f}' for t in out['detected_onsets']) or 'none'}")
  if 'true_onsets' in out:
    print(f"true onsets (s): {', '.join(f'{t:.2f}' for t in out['true_onsets']) or 'none'}; "
          f"hit-rate at +-100 ms {out['onset_hit@100ms']:.1f}%")


if __name__ == '__main__':
  app.run(main)
