"""FAD with a user's own audio embedding network in ONNX (e.g. VGGish or PaSST, converted).

The project's FAD uses its own evaluator network, so its numbers are comparable with each
other and not with the literature's. A user who has the weights of a published embedding
converts it to ONNX and passes it to `evaluate --fad_embedding=model.onnx`: waveforms are
resampled to the network's rate (`--fad_sample_rate`), cut into windows of
`--fad_window_seconds` (hop `--fad_hop_seconds`, the window by default; a clip shorter than
one window is zero-padded to it), every window is embedded, and FAD compares the Gaussian
fits of all windows' embeddings, as the FAD toolkits do with VGGish's 0.96 s frames.

The network takes one float32 input of shape (batch, window samples) and returns
(batch, D) or (batch, ..., D), flattened to (batch, -1). onnxruntime is an optional extra:
`pip install -e '.[onnx]'`.
"""

import hashlib
import math
import os

import numpy as np
import scipy.signal

from gmscavp_jax.infra import errors


class OnnxEmbedding:
  """An ONNX audio embedding network: waveforms (N,S) -> window embeddings (N * W, D)."""

  def __init__(self, path: str, sample_rate: int, window_seconds: float,
               hop_seconds: float | None = None, batch_size: int = 64):
    if not os.path.isfile(path):
      raise FileNotFoundError(f'--fad_embedding={path}: no such ONNX file')
    if sample_rate <= 0 or window_seconds <= 0 or (hop_seconds is not None and hop_seconds <= 0):
      raise errors.ConfigError(
          f'--fad_sample_rate={sample_rate}, --fad_window_seconds={window_seconds}, '
          f'--fad_hop_seconds={hop_seconds}: expected positive values')
    try:
      import onnxruntime  # pylint: disable=g-import-not-at-top
    except ImportError as e:
      raise errors.ConfigError("--fad_embedding needs onnxruntime: pip install -e '.[onnx]'"
                               ) from e
    self._session = onnxruntime.InferenceSession(path, providers=['CPUExecutionProvider'])
    self._input = self._session.get_inputs()[0].name
    self.sample_rate = int(sample_rate)
    self.window = max(int(round(window_seconds * sample_rate)), 1)
    self.hop = max(int(round((hop_seconds or window_seconds) * sample_rate)), 1)
    self.batch_size = batch_size
    with open(path, 'rb') as f:
      self.identity = f'{os.path.basename(path)} sha256:{hashlib.sha256(f.read()).hexdigest()[:12]}'

  def windows(self, waveforms: np.ndarray, source_rate: int) -> np.ndarray:
    """(N,S) waveforms at `source_rate` -> (N * W, window) float32 windows at the network's
    rate (W windows a clip, the same for every clip)."""
    wave = np.asarray(waveforms, np.float64)
    if source_rate != self.sample_rate:
      g = math.gcd(int(source_rate), self.sample_rate)
      wave = scipy.signal.resample_poly(wave, self.sample_rate // g, int(source_rate) // g,
                                        axis=1)
    if wave.shape[1] < self.window:
      wave = np.pad(wave, ((0, 0), (0, self.window - wave.shape[1])))
    starts = range(0, wave.shape[1] - self.window + 1, self.hop)
    return np.stack([wave[:, s:s + self.window] for s in starts], axis=1).reshape(
        -1, self.window).astype(np.float32)

  def __call__(self, waveforms: np.ndarray, source_rate: int) -> np.ndarray:
    """Embeddings (N * W, D) of every window of (N,S) waveforms at `source_rate`."""
    windows = self.windows(waveforms, source_rate)
    out = [self._session.run(None, {self._input: windows[i:i + self.batch_size]})[0]
           for i in range(0, len(windows), self.batch_size)]
    return np.concatenate([o.reshape(len(o), -1) for o in out]).astype(np.float64)
