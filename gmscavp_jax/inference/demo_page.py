"""The demo page: a trained workdir's soundtracks and retrieval in a browser (gradio).

`Backend` restores the workdir once per server and answers one request at a time through
the functions the CLIs run (`video_to_audio.Soundtracker` for generate,
`retrieval_queries.Retriever` for retrieve); `build_app` lays out the page around it and
`serve` starts it. Only demo.py (and the demo's tests) import this module, so the core
package never needs gradio (`pip install -e .[demo]`).
"""

import asyncio
from collections.abc import Callable
import contextlib
import functools
import os
import shutil
import tempfile
import time

from absl import logging
import gradio as gr
import numpy as np

from gmscavp_jax import cli
from gmscavp_jax.core import config_io
from gmscavp_jax.core import sampling
from gmscavp_jax.data import media
from gmscavp_jax.data import media_writing
from gmscavp_jax.data import pipeline
from gmscavp_jax.diffusion import samplers
from gmscavp_jax.inference import long_video
from gmscavp_jax.inference import retrieval_queries
from gmscavp_jax.inference import soundtrack_folder
from gmscavp_jax.inference import video_to_audio
from gmscavp_jax.infra import errors

TITLE = 'GMS-CAVP: a soundtrack for your video'
# Request folders kept on disk (gradio copies what it serves into its own cache, so only the
# newest few are kept: their number, not time, bounds this folder).
_KEEP_REQUESTS = 8
# How long gradio keeps an upload or a served file before deleting it: long enough to play
# the results and to generate again from the same upload, short enough that many users'
# uploads do not fill the disk.
DEFAULT_CACHE_SECONDS = 600
# Progress fractions at which each stage of a request starts.
_STAGES = {'decoding': 0.0, 'sampling': 0.1, 'vocoding': 0.6, 'writing': 0.65,
           'whole video': 0.7, 'retrieving': 0.9}
TABLE_HEADERS = ['rank', 'clip', 'class', 'score', 'note']


class Backend:
  """One workdir's generator and retriever, restored once; `answer` serves a request."""

  def __init__(self, workdir: str, output_dir: str, *, max_upload_mb: float, top_k: int = 5,
               vocoder: str = 'auto', evaluator_dir: str | None = None,
               cache_seconds: int = DEFAULT_CACHE_SECONDS):
    self.soundtracker = video_to_audio.Soundtracker(workdir, vocoder, evaluator_dir)
    self.retriever = retrieval_queries.Retriever(workdir,
                                                 restored=self.soundtracker.restored)
    self.num_test_clips = len(self.retriever.embeddings['index'])
    self.cache_seconds = cache_seconds  # How long uploads and served files are kept.
    self._output_dir, self._top_k = output_dir, top_k
    self._max_bytes = int(max_upload_mb * 2**20)
    self._requests = 0

  def _request_dir(self) -> str:
    """A fresh folder for this request's files; the oldest beyond _KEEP_REQUESTS go."""
    self._requests += 1
    stale = os.path.join(self._output_dir, f'request{self._requests - _KEEP_REQUESTS:06d}')
    shutil.rmtree(stale, ignore_errors=True)
    return os.path.join(self._output_dir, f'request{self._requests:06d}')

  def _keep_upload(self, video: str) -> None:
    """Restarts the age of the upload (`sweep_cache` deletes by ctime), so that it stays
    for the whole request; raises MediaError if it was swept while the request waited."""
    try:
      os.utime(video)
    except FileNotFoundError:
      raise media.MediaError(
          video, f'is no longer on the server (uploads are deleted after '
          f'{self.cache_seconds} s and this request waited longer): upload it again') from None

  def answer(self, *, video: str | None = None, test_index: int | None = None,
             start_seconds: float = 0.0, seed: int = 0,
             progress: Callable[[str], None] = lambda stage: None, **sampler_args) -> dict:
    """Generates for an uploaded `video` (the window at `start_seconds`) or test clip
    `test_index` and retrieves for it.

    Returns `Soundtracker.write`'s dict plus 'original_wav' (the clip's own audio at the
    model's rate, None if it has none), 'v2a' and 'a2v' (top-k hits; 'a2v' only when the clip
    has audio) and 'test_index'. Raises cli.USER_ERRORS for an unusable request.
    """
    progress('decoding')
    if video is not None:
      self._keep_upload(video)
      media.check_size(video, self._max_bytes)  # Before any decoding.
    elif not (test_index is not None and 0 <= test_index < self.num_test_clips):
      raise errors.ConfigError(
          f'test clip {test_index}: expected an index in [0, {self.num_test_clips})')
    clip = self.soundtracker.load_clip(video=video, test_index=test_index,
                                       start_seconds=start_seconds)
    out_dir = self._request_dir()
    out = self.soundtracker.write(clip, out_dir, seed=seed, progress=progress, **sampler_args)
    config = self.soundtracker.config
    if video is not None and not soundtrack_folder.is_one_clip(config, video, start_seconds,
                                                               None):
      # Longer than a clip: the video and audio outputs cover all of it from the start time;
      # the spectrogram, onsets and retrieval stay those of the first window.
      progress('whole video')
      self._keep_upload(video)  # Read again, maybe after a first compilation.
      name = os.path.join(out_dir, clip['name'] + '_whole')
      job = long_video.Job(video, name + '.wav', name + '.mp4', start_seconds)
      info = long_video.run_one(self.soundtracker, job, seed=seed, **sampler_args)
      out.update(wav=job.wav, mp4=job.mp4, whole_seconds=info['seconds'],
                 windows=info['windows'])
    out['test_index'] = test_index
    out['original_wav'] = None
    if clip['waveform'] is not None:
      out['original_wav'] = os.path.join(out_dir, clip['name'] + '_original.wav')
      media_writing.write_wav(out['original_wav'], clip['waveform'],
                              self.soundtracker.config.audio.sample_rate)
    progress('retrieving')
    if video is None:
      out.update(self.retriever.test_clip(test_index, self._top_k))
    else:
      out.update(self.retriever.clip(self._top_k, frames=clip['frames'],
                                     waveform=clip['waveform']))
    return out


def _table(hits: list[dict] | None, query: int | None) -> list[list]:
  """Rows of a top-k table: rank, clip, class, score, and whether it is the query's pair."""
  return [[rank, h['clip'], h['label'], round(h['score'], 4),
           "the query's own pair" if h['clip'] == query else '']
          for rank, h in enumerate(hits or [], 1)]


def _summary(out: dict) -> str:
  """The Markdown line above the results: onsets, and their hit-rate for a test clip."""
  onsets = ', '.join(f'{t:.2f}' for t in out['detected_onsets']) or 'none'
  text = f"Checkpoint {out['step']}. Onsets detected in the generated audio (s): {onsets}."
  if 'true_onsets' in out:
    true = ', '.join(f'{t:.2f}' for t in out['true_onsets']) or 'none'
    text += (f" True onsets (s): {true}; hit-rate at ±100 ms "
             f"{out['onset_hit@100ms']:.1f}%.")
  if 'whole_seconds' in out:
    text += (f" The soundtrack covers the whole video from the start time "
             f"({out['whole_seconds']:.1f} s, {out['windows']} overlapping windows); the "
             "spectrogram and the tables are those of its first clip.")
  if out['original_wav'] is None:
    text += ' The video has no sound: no original spectrogram, no audio → video retrieval.'
  return text


def _error_message(e: Exception) -> str:
  """What the page says about an unusable request: the file's name (not the server's temp
  path) and the reason."""
  if isinstance(e, media.MediaError):
    return f'**Cannot use this upload:** {os.path.basename(e.path)} {e.reason}.'
  return f'**Cannot run this request:** {e}'


def _respond(backend: Backend, progress: gr.Progress, **request) -> tuple:
  """The page's outputs for one request: (mp4, spectrogram PNG, original WAV, generated WAV,
  v2a rows, a2v rows, message); a user error leaves the results empty and says why."""
  def report(stage):
    progress(_STAGES[stage], desc=stage)

  try:
    out = backend.answer(progress=report, **request)
  except cli.USER_ERRORS as e:
    logging.warning('request %s refused: %s', request, e)
    return None, None, None, None, [], [], _error_message(e)
  return (out['mp4'], out['png'], out['original_wav'], out['wav'],
          _table(out.get('v2a'), out['test_index']), _table(out.get('a2v'), out['test_index']),
          _summary(out))


def build_app(backend: Backend) -> gr.Blocks:
  """The page: an upload or a test clip in, sampler controls, and the results beside them.

  Two API endpoints, /generate_upload (video, start_seconds, sampler, steps, guidance, seed)
  and /generate_test_clip (test_index, sampler, steps, guidance, seed), each returning the
  seven outputs of `_respond`.
  """
  config = backend.soundtracker.config
  defaults = sampling.sampler_settings(config.eval)
  seconds = config.data.num_frames / config.data.fps
  with gr.Blocks(title=TITLE, analytics_enabled=False) as app:
    gr.Markdown(f'# {TITLE}\n'
                f'Workdir `{backend.soundtracker.workdir}`: {config.experiment}, checkpoint '
                f'{backend.soundtracker.step}. The model hears and sees {seconds:g} s clips '
                f'({config.data.num_frames} frames of {config.data.image_size}x'
                f'{config.data.image_size}, {config.audio.sample_rate} Hz audio); a longer '
                'video is read from the start time on.')
    with gr.Row():
      with gr.Column(scale=1):
        with gr.Tab('Upload a video'):
          video = gr.Video(label='Video', sources=['upload'], elem_id='upload_video')
          start = gr.Number(0.0, label='Start (s)', minimum=0.0)
          upload_button = gr.Button('Generate', variant='primary', elem_id='generate_upload')
        with gr.Tab('Pick a test clip'):
          test_index = gr.Number(0, label=f'Test clip (0-{backend.num_test_clips - 1})',
                                 precision=0, minimum=0, maximum=backend.num_test_clips - 1)
          test_button = gr.Button('Generate for this clip', variant='primary')
        sampler = gr.Dropdown(list(samplers.SAMPLERS), value=defaults['sampler'],
                              label='Sampler')
        steps = gr.Slider(1, 200, value=defaults['num_steps'], step=1, label='Steps')
        guidance = gr.Number(defaults['guidance'], label='Guidance scale', minimum=1.0)
        seed = gr.Number(0, label='Seed', precision=0)
      with gr.Column(scale=2):
        message = gr.Markdown('Upload a video or pick a test clip, then press Generate.',
                              elem_id='message')
        with gr.Row():
          video_out = gr.Video(label='Video with the generated soundtrack', height=300)
          with gr.Column():
            original = gr.Audio(label='Original audio', type='filepath')
            generated = gr.Audio(label='Generated audio', type='filepath')
        spectrogram = gr.Image(label='Generated vs original spectrogram', type='filepath')
        with gr.Row():
          v2a = gr.Dataframe(headers=TABLE_HEADERS, label='Video → audio: top test clips')
          a2v = gr.Dataframe(headers=TABLE_HEADERS, label='Audio → video: top test clips')
    outputs = [video_out, spectrogram, original, generated, v2a, a2v, message]

    def from_upload(video, start, sampler, steps, guidance, seed, progress=gr.Progress()):
      if video is None:
        return None, None, None, None, [], [], '**Upload a video first.**'
      return _respond(backend, progress, video=video, start_seconds=float(start or 0.0),
                      sampler=sampler, num_steps=int(steps), guidance=float(guidance),
                      seed=int(seed))

    def from_test_clip(index, sampler, steps, guidance, seed, progress=gr.Progress()):
      return _respond(backend, progress, test_index=int(index), sampler=sampler,
                      num_steps=int(steps), guidance=float(guidance), seed=int(seed))

    # One request at a time: the model and its compiled programs are shared.
    upload_button.click(from_upload, [video, start, sampler, steps, guidance, seed], outputs,
                        api_name='generate_upload', concurrency_limit=1,
                        concurrency_id='model')
    test_button.click(from_test_clip, [test_index, sampler, steps, guidance, seed], outputs,
                      api_name='generate_test_clip', concurrency_limit=1,
                      concurrency_id='model')
  return app


def sweep_cache(app: gr.Blocks, age_seconds: float | None) -> int:
  """Deletes the uploads and served files gradio cached for `app` that are older than
  `age_seconds` (by ctime; all of them if None), and the content-hash folders they leave
  empty. Returns how many files went.

  gradio's own sweep (Blocks(delete_cache=...)) iterates over its sets of cached paths while
  new uploads are added to them: under concurrent users it dies with 'Set changed size during
  iteration' and never deletes again. This one iterates over copies (taken under the GIL).
  """
  keep = set()
  for block in list(app.blocks.values()):
    keep.update(getattr(block, 'keep_in_cache', ()))  # A component's own default files.
  now, removed = time.time(), 0
  for paths in list(app.temp_file_sets):
    for path in paths.copy():
      if path in keep:
        continue
      try:
        if age_seconds is not None and now - os.lstat(path).st_ctime <= age_seconds:
          continue
        os.remove(path)
        removed += 1
      except FileNotFoundError:
        pass
      paths.discard(path)
      with contextlib.suppress(OSError):  # Not empty: another file of the same content.
        os.rmdir(os.path.dirname(path))
  return removed


@contextlib.asynccontextmanager
async def _sweeping(unused_fastapi_app, *, app: gr.Blocks, age_seconds: int):
  """While the server runs, `sweep_cache` every tenth of `age_seconds`; all at the end.

  The sweep runs on the server's event loop, not in a thread: gradio's upload route makes a
  content-hash folder and renames the upload into it with no await between, so on the loop
  the sweep can neither remove that folder in between (the upload then fails) nor delete a
  same-named upload that has just replaced a stale one. A sweep is a few stat calls per file.
  """
  async def loop():
    while True:
      await asyncio.sleep(max(1, age_seconds // 10))
      try:
        sweep_cache(app, age_seconds)
      except Exception:  # pylint: disable=broad-except  (the next sweep tries again)
        logging.exception('sweeping the demo cache failed')

  task = asyncio.create_task(loop())
  try:
    yield
  finally:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
      await task
    sweep_cache(app, None)


def serve(workdir: str, *, port: int, max_upload_mb: float, top_k: int = 5,
          output_dir: str | None = None, block: bool = True, vocoder: str = 'auto',
          evaluator_dir: str | None = None,
          cache_seconds: int = DEFAULT_CACHE_SECONDS) -> gr.Blocks:
  """Restores `workdir` and serves its page on http://127.0.0.1:`port` only (no share link,
  no telemetry: it works offline). Request files go to `output_dir` (default: a new
  temporary folder; the newest few requests' are kept), uploads and served files to gradio's
  cache (GRADIO_TEMP_DIR, default TMPDIR/gradio) for `cache_seconds`. block=False returns the
  running app at once (`.close()` stops it and empties its cache). `vocoder`/`evaluator_dir`
  choose how audio is made (evaluators/vocoders.py)."""
  output_dir = output_dir or tempfile.mkdtemp(prefix='gmscavp_demo_')
  backend = Backend(workdir, output_dir, max_upload_mb=max_upload_mb, top_k=top_k,
                    vocoder=vocoder, evaluator_dir=evaluator_dir, cache_seconds=cache_seconds)
  app = build_app(backend)
  # gradio copies every upload and every served file into its cache (one folder per content
  # hash); _sweeping deletes them once `cache_seconds` old. A request must start within that
  # age of its upload (Backend._keep_upload says so otherwise).
  lifespan = functools.partial(_sweeping, app=app, age_seconds=cache_seconds)
  app.queue().launch(server_name='127.0.0.1', server_port=port, share=False,
                     allowed_paths=[output_dir], footer_links=[], prevent_thread_lock=not block,
                     app_kwargs={'lifespan': lifespan})
  return app


def clips_as_upload(workdir: str, seconds: float, path: str, *, first: int = 0,
                    sound: bool = True) -> str:
  """Writes test clips `first`, `first` + 1, ... back to back (frames, and their sound if
  `sound`) to `path`, an mp4 of ~`seconds`.

  What the demo's benchmark and tests upload. Returns `path`.
  """
  config = config_io.load_config(workdir)
  clip_seconds = config.data.num_frames / config.data.fps
  source = pipeline.make_source(config, 'test')
  clips = [source[first + i] for i in range(max(1, round(seconds / clip_seconds)))]
  waveform = np.concatenate([c['waveform'] for c in clips]) if sound else None
  media_writing.write_video(path, np.concatenate([c['frames'] for c in clips]), config.data.fps,
                            waveform, config.audio.sample_rate if sound else None)
  return path
