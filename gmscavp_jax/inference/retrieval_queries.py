"""Retrieval queries against the test split of a trained workdir (the library side of the
retrieve CLI; the demo calls it too).

A query is a clip of the test split (answered from the saved test embeddings: no model to
restore) or a video or audio file from outside it, which the newest checkpoint's encoders
embed; its video ranks the split's audios (v2a), its audio the split's videos (a2v).
"""

from absl import logging
import numpy as np

from gmscavp_jax.core import config_io
from gmscavp_jax.core import state as state_lib
from gmscavp_jax.data import media
from gmscavp_jax.evaluators import retrieval
from gmscavp_jax.inference import video_to_audio
from gmscavp_jax.infra import checkpointing
from gmscavp_jax.infra import errors


def test_embeddings(workdir: str) -> dict:
  """Test-split embeddings of the newest checkpoint in `workdir` (cached or recomputed)."""
  config = config_io.load_config(workdir)
  ckpt = checkpointing.Checkpointer(workdir, keep=config.train.keep_checkpoints)
  saved_steps = ckpt.all_steps()
  ckpt.close()
  if not saved_steps:
    raise FileNotFoundError(f'no checkpoint in {checkpointing.checkpoint_dir(workdir)}')
  cached = retrieval.load_embeddings(workdir)
  if cached is not None and int(cached['step']) == saved_steps[-1]:
    return cached
  logging.info('embedding the test split with checkpoint %d', saved_steps[-1])
  _, mesh, models, params, step = state_lib.restore_workdir(workdir, config)
  _, emb = retrieval.RetrievalEvaluator(config, mesh, models).run(params)
  emb['step'] = step
  return emb



def test_clip_query(workdir: str, test_index: int, top_k: int, direction: str = 'both') -> dict:
  """`retrieval.answer_query` for test clip `test_index` of `workdir` (ValueError if out of
  range)."""
  return retrieval.answer_query(test_embeddings(workdir), test_index, top_k, direction)


class Retriever:
  """The test split's embeddings and the encoders that embed new queries, loaded once."""

  def __init__(self, workdir: str, *, restored: state_lib.Restored | None = None):
    """`restored`: `workdir` already restored (the demo shares its generator's); restored
    here when None."""
    restored = restored or state_lib.restore_workdir(workdir)
    self.config, self.mesh, models, self._params, self.step = restored
    self.embeddings = test_embeddings(workdir)
    if int(self.embeddings['step']) != self.step:  # A checkpoint was saved in between.
      raise errors.ConfigError(
          f'{workdir}: the test embeddings are of step {int(self.embeddings["step"])} but the '
          f'restored checkpoint is step {self.step}; try again once training has stopped')
    self._evaluator = retrieval.RetrievalEvaluator(self.config, self.mesh, models)

  def test_clip(self, test_index: int, top_k: int, direction: str = 'both') -> dict:
    """`retrieval.answer_query` for test clip `test_index`."""
    return retrieval.answer_query(self.embeddings, test_index, top_k, direction)

  def clip(self, top_k: int, *, frames: np.ndarray | None = None,
           waveform: np.ndarray | None = None) -> dict:
    """Top-k test clips for frames (T,H,W,3) uint8 and/or a waveform (S,) of the config's
    clip length: `retrieval.answer_embedding_query`'s dict ('v2a' with frames, 'a2v' with a
    waveform)."""
    if frames is None and waveform is None:
      raise ValueError('a query needs frames, a waveform or both')
    c = self.config
    # One compiled embedding program embeds both; a missing modality is zeros, left unused.
    video, audio = self._evaluator.embed_clips(
        self._params,
        (np.zeros((c.data.num_frames, c.data.image_size, c.data.image_size, 3), np.uint8)
         if frames is None else frames)[None],
        (np.zeros(video_to_audio.num_samples(c), np.float32) if waveform is None
         else waveform)[None])
    return retrieval.answer_embedding_query(
        self.embeddings, top_k, video=None if frames is None else video[0],
        audio=None if waveform is None else audio[0])


def load_query(config, *, video: str | None = None, audio: str | None = None,
               start_seconds: float = 0.0) -> dict:
  """The clip window at `start_seconds` of a video file ({'frames', 'waveform'}: its sound
  too, None when it has none) or of an audio file ({'frames': None, 'waveform'});
  media.MediaError for a file unfit for it."""
  if (video is None) == (audio is None):
    raise ValueError('give exactly one of video= or audio=')
  if video is not None:
    clip = video_to_audio.load_clip(config, video=video, test_index=None,
                                    start_seconds=start_seconds)
    return {'frames': clip['frames'], 'waveform': clip['waveform']}
  return {'frames': None,
          'waveform': media.read_audio(audio, sample_rate=config.audio.sample_rate,
                                       num_samples=video_to_audio.num_samples(config),
                                       start_seconds=start_seconds)}


def file_query(workdir: str, top_k: int, *, video: str | None = None, audio: str | None = None,
               start_seconds: float = 0.0) -> dict:
  """`Retriever.clip`'s answer for `load_query`'s clip (decoded before the checkpoint is
  restored, so a bad file is reported at once)."""
  query = load_query(config_io.load_config(workdir), video=video, audio=audio,
                     start_seconds=start_seconds)
  return Retriever(workdir).clip(top_k, **query)
