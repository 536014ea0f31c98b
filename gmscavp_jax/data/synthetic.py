"""The embedded synthetic audio-visual benchmark (DESIGN §4).

A procedural world with real audio-visual correspondence. K source classes each have a look
(shape x colour) and a timbre (fundamental, harmonic profile, decay, noise share). A clip has
1-3 objects moving at constant velocity and bouncing off the frame walls; 1-2 of them sound:
every wall impact or flash of a sounding object emits its class's sound at that instant, louder
for faster impacts. Silent distractors, background noise and brightness jitter make the task
less trivial. Everything is a pure function of (seed, split, index): random access, no files.

Pure numpy: this module runs inside grain worker processes, so jax is imported only on the
optional log-mel path.
"""

import operator
from typing import Any

import ml_collections
import numpy as np

from gmscavp_jax.data import media

SPLITS = {'train': 0, 'validation': 1, 'test': 2}
SHAPES = ('circle', 'square', 'triangle', 'diamond')

# Entropy tag of the class-definition stream; clip streams are [seed, split_id, index].
_CLASS_STREAM = 1000

# World constants. Lengths are fractions of the frame side, times are in seconds.
_RADIUS = (0.07, 0.12)  # Object radius (its extent from the centre, used for bounces).
_SPEED = (0.3, 0.8)  # Frame sides per second: 1-3 bounces per object in a 2 s clip.
_FLASH_RATE = 0.4  # Poisson rate (per second) of flashes of a sounding object.
_MIN_EVENTS = 2  # Slow objects get extra flashes up to this many events.
_FLASH_DECAY_FRAMES = 1.5  # Visual afterglow of a flash, in frames.
_BOUNCE_AMP = (0.15, 0.45)  # Amplitude = a + b * min(normal speed / max speed, 1).
_FLASH_AMP = 0.35
_NOISE_RMS = (0.002, 0.02)  # Background noise level, log-uniform.
_BACKGROUND = (0.03, 0.2)  # Background RGB in [0, 1].
_GAIN = (0.75, 1.25)  # Per-clip brightness jitter.

# Timbre building blocks. Classes are ranked by fundamental (log-spaced) and neighbours in
# that ranking get different harmonic profiles and decays, so no two timbres are close.
_F0_RANGE = (110.0, 880.0)
_DECAYS = (0.03, 0.07, 0.15, 0.3)
_ATTACK = 0.003
_MAX_HARMONICS = 24


def _hue_to_rgb(hue: np.ndarray, saturation: float = 0.85, value: float = 0.95) -> np.ndarray:
  """Hues in [0, 1) of shape (N,) -> (N, 3) RGB in [0, 1] (HSV with fixed s and v)."""
  h6 = (hue % 1.0) * 6.0
  k = (np.array([5.0, 3.0, 1.0])[None, :] + h6[:, None]) % 6.0
  return value - value * saturation * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)


def _harmonic_amplitudes(profile: int, num: int) -> np.ndarray:
  """Amplitudes (num,) of harmonics 1..num for one of four profiles (pure, saw, odd, bright)."""
  n = np.arange(1, num + 1, dtype=np.float64)
  if profile == 0:
    return 0.3**(n - 1)
  if profile == 1:
    return 1.0 / n
  if profile == 2:
    return np.where(n % 2 == 1, 1.0 / n, 0.0)
  return n**-0.3


def _make_kernel(rng: np.random.Generator, f0: float, profile: int, decay: float,
                 noise_share: float, sample_rate: int, max_len: int) -> np.ndarray:
  """One class's sound, (L,) float32 with peak 1: harmonics + noise under an attack/decay."""
  length = max(1, min(int(5 * decay * sample_rate), max_len))
  t = np.arange(length) / sample_rate
  num = int(max(1, min(_MAX_HARMONICS, 0.9 * (sample_rate / 2) // f0)))
  amps = _harmonic_amplitudes(profile, num)
  phases = rng.uniform(0, 2 * np.pi, num)
  tone = np.sum(amps[:, None] * np.sin(2 * np.pi * f0 * np.arange(1, num + 1)[:, None] *
                                       t[None, :] + phases[:, None]), axis=0)
  noise = rng.standard_normal(length)
  mix = ((1 - noise_share) * tone / (np.std(tone) + 1e-9) +
         noise_share * noise / (np.std(noise) + 1e-9))
  envelope = np.minimum(t / _ATTACK, 1.0) * np.exp(-t / decay)
  kernel = mix * envelope
  return (kernel / (np.max(np.abs(kernel)) + 1e-9)).astype(np.float32)


def _signed_distance(shape: int, dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
  """Distance inside the shape's edge, in radius units (> 0 inside); dx, dy broadcast."""
  adx = np.abs(dx)
  if shape == 0:  # Circle.
    return 1.0 - np.sqrt(dx * dx + dy * dy)
  if shape == 1:  # Square of half-side 0.85 (area close to the circle's).
    return 0.85 - np.maximum(adx, np.abs(dy))
  if shape == 2:  # Triangle, apex up at (0, -1), base corners at (+-0.95, 0.7).
    return np.minimum(0.7 - dy, (0.95 - 1.7 * adx + 0.95 * dy) / 1.947)
  return (1.0 - adx - np.abs(dy)) / np.sqrt(2.0)  # Diamond.


def _wall_impacts(start: np.ndarray, velocity: np.ndarray, low: np.ndarray, span: np.ndarray,
                  duration: float) -> tuple[np.ndarray, np.ndarray]:
  """Wall-impact times in (0, duration) and normal speeds of one object, both (N,), sorted.

  The unfolded coordinate s(t) = start - low + v t hits a wall whenever it crosses a multiple
  of `span` (the reflected position is a triangle wave of s), so impacts are solved exactly in
  continuous time rather than found between frames.
  """
  times, speeds = [], []
  for axis in range(2):
    v = velocity[axis]
    if v == 0.0:
      continue
    s0 = (start[axis] - low[axis]) / span[axis]
    s1 = s0 + v * duration / span[axis]
    if v > 0:
      m = np.arange(np.floor(s0) + 1, np.ceil(s1))
    else:
      m = np.arange(np.ceil(s0) - 1, np.floor(s1), -1)
    times.append((m - s0) * span[axis] / v)
    speeds.append(np.full(m.shape, abs(v)))
  times, speeds = np.concatenate(times + [np.zeros(0)]), np.concatenate(speeds + [np.zeros(0)])
  order = np.argsort(times, kind='stable')
  return times[order], speeds[order]


class SyntheticAVSource:
  """Random-access source of synthetic clips (grain's RandomAccessDataSource protocol).

  `source[i]` is a dict of numpy arrays:
    frames (T,H,W,3) uint8; waveform (S,) float32 in [-1, 1]; label () int32, the class of the
    first sounding object; labels (K,) float32 multi-hot of the sounding classes; visible (K,)
    float32 multi-hot of the classes on screen (every object's: the sounding ones and the
    silent distractors, so visible >= labels); flashing (K,) float32 multi-hot of the classes
    of the objects seen flashing (only sounding objects flash, so flashing <= labels); onsets (M,)
    float32, sorted sound onset times in seconds padded with -1 (the earliest M are kept);
    num_onsets () int32, how many entries of `onsets` are real; index () int32;
    and log_mel (Ta,F) float32 when `audio_cfg` is given (computed with JAX; the training
    pipeline leaves it None and computes log-mel on device).
  T = num_frames, H = W = image_size, S = round(num_frames / fps * sample_rate),
  K = num_classes, M = max_onsets. Clips depend only on (seed, split, index); the class
  definitions only on seed, so every split shares them.
  """

  def __init__(self, *, split: str, num_clips: int, seed: int, num_classes: int = 16,
               num_frames: int = 16, fps: float = 8.0, image_size: int = 64,
               sample_rate: int = 8000, max_onsets: int = 32,
               audio_cfg: ml_collections.ConfigDict | None = None):
    if split not in SPLITS:
      raise ValueError(f'split={split!r} is unknown; expected one of {sorted(SPLITS)}')
    for name, value in (('num_clips', num_clips), ('num_classes', num_classes),
                        ('num_frames', num_frames), ('image_size', image_size),
                        ('sample_rate', sample_rate), ('max_onsets', max_onsets)):
      if int(value) != value or value <= 0:
        raise ValueError(f'{name}={value!r} must be a positive integer')
    if int(seed) != seed or seed < 0:
      raise ValueError(f'seed={seed!r} must be a non-negative integer')
    if not fps > 0:
      raise ValueError(f'fps={fps!r} must be positive')
    if image_size < 8:
      raise ValueError(f'image_size={image_size!r} must be at least 8 pixels')
    if audio_cfg is not None and int(audio_cfg.sample_rate) != sample_rate:
      raise ValueError(f'audio_cfg.sample_rate={audio_cfg.sample_rate} differs from '
                       f'sample_rate={sample_rate}')
    self.split = split
    self.num_clips = int(num_clips)
    self.seed = int(seed)
    self.num_classes = int(num_classes)
    self.num_frames = int(num_frames)
    self.fps = float(fps)
    self.image_size = int(image_size)
    self.sample_rate = int(sample_rate)
    self.max_onsets = int(max_onsets)
    self.audio_cfg = audio_cfg
    self.seconds = self.num_frames / self.fps
    self.num_samples = media.clip_num_samples(self.num_frames, self.fps, self.sample_rate)
    self._build_classes()

  def _build_classes(self):
    """Fixes each class's look and timbre from the seed alone."""
    k = self.num_classes
    rng = np.random.default_rng([self.seed, _CLASS_STREAM])
    # Looks: shape cycles fastest, then evenly spaced hues (4 hues for K = 16).
    self.class_shapes = np.arange(k) % len(SHAPES)
    num_hues = -(-k // len(SHAPES))
    self.class_colours = _hue_to_rgb(np.arange(k) // len(SHAPES) / num_hues)  # (K, 3)
    # Timbres: the seed decides which class gets which rank on the fundamental ladder.
    rank = rng.permutation(k)
    ladder = np.geomspace(*_F0_RANGE, k) if k > 1 else np.array([_F0_RANGE[0]])
    step = (_F0_RANGE[1] / _F0_RANGE[0])**(1 / max(k - 1, 1))
    self.class_f0 = ladder[rank] * step**rng.uniform(-0.15, 0.15, k)
    self.class_profiles = rank % 4
    self.class_decays = np.array(_DECAYS)[(rank // 4 + rank) % len(_DECAYS)]
    self.class_noise_share = rng.uniform(0.0, 0.3, k)
    self.kernels = [
        _make_kernel(rng, self.class_f0[c], self.class_profiles[c], self.class_decays[c],
                     self.class_noise_share[c], self.sample_rate, self.num_samples)
        for c in range(k)
    ]

  def __len__(self) -> int:
    return self.num_clips

  def __repr__(self) -> str:
    audio = None
    if self.audio_cfg is not None:
      audio = dict(sorted(self.audio_cfg.to_dict().items()))
    return (f'SyntheticAVSource(split={self.split!r}, num_clips={self.num_clips}, '
            f'seed={self.seed}, num_classes={self.num_classes}, '
            f'num_frames={self.num_frames}, fps={self.fps!r}, image_size={self.image_size}, '
            f'sample_rate={self.sample_rate}, max_onsets={self.max_onsets}, '
            f'audio_cfg={audio!r})')

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    """Clip `index` (0 <= index < len(self)) as the dict described in the class docstring."""
    index = operator.index(index)
    if not 0 <= index < self.num_clips:
      raise IndexError(f'index {index} is out of range for {self.split!r} split of size '
                       f'{self.num_clips}')
    rng = np.random.default_rng([self.seed, SPLITS[self.split], index])
    clip = self._generate(rng)
    clip['index'] = np.int32(index)
    if self.audio_cfg is not None:
      from gmscavp_jax.data import audio  # pylint: disable=g-import-not-at-top
      clip['log_mel'] = np.asarray(audio.log_mel_from_config(clip['waveform'], self.audio_cfg))
    return clip

  def _generate(self, rng: np.random.Generator) -> dict[str, Any]:
    """Samples one clip's objects and events, then renders frames and synthesises audio."""
    k, duration = self.num_classes, self.seconds
    num_objects = int(rng.integers(1, 4))
    num_sounding = 1 if num_objects == 1 or k == 1 else int(rng.integers(1, 3))
    classes = np.concatenate([
        rng.choice(k, num_sounding, replace=False),
        rng.integers(0, k, num_objects - num_sounding)])
    radius = rng.uniform(*_RADIUS, num_objects)
    low, span = radius[:, None] * np.ones(2), (1.0 - 2.0 * radius)[:, None] * np.ones(2)
    start = low + span * rng.uniform(0.0, 1.0, (num_objects, 2))
    angle = rng.uniform(0.0, 2.0 * np.pi, num_objects)
    velocity = rng.uniform(*_SPEED, num_objects)[:, None] * np.stack(
        [np.cos(angle), np.sin(angle)], axis=-1)

    # Events of the sounding objects (the first `num_sounding`): wall impacts and flashes.
    flash_end = max(duration - 1.0 / self.fps, 0.5 * duration)  # Leave a frame to see it.
    event_times, event_amps, event_classes, flashes = [], [], [], []
    for i in range(num_sounding):
      times, speeds = _wall_impacts(start[i], velocity[i], low[i], span[i], duration)
      num_flashes = max(int(rng.poisson(_FLASH_RATE * duration)), _MIN_EVENTS - len(times))
      flash_times = rng.uniform(0.0, flash_end, num_flashes)
      flashes.append(flash_times)
      amps = _BOUNCE_AMP[0] + _BOUNCE_AMP[1] * np.minimum(speeds / _SPEED[1], 1.0)
      event_times += [times, flash_times]
      event_amps += [amps, np.full(num_flashes, _FLASH_AMP)]
      event_classes += [np.full(len(times) + num_flashes, classes[i])]
    event_times = np.concatenate(event_times)
    event_amps = np.concatenate(event_amps)
    event_classes = np.concatenate(event_classes)

    frames = self._render(rng, classes, radius, start, velocity, low, span, flashes)
    waveform = self._synthesise(rng, event_times, event_amps, event_classes)

    onsets = np.sort(event_times)[:self.max_onsets]
    padded = np.full(self.max_onsets, -1.0, np.float32)
    padded[:len(onsets)] = onsets
    labels = np.zeros(k, np.float32)
    labels[classes[:num_sounding]] = 1.0
    # Every object is drawn, so the visible classes are all of them (draws no random numbers:
    # the other fields stay as they were before this field existed).
    visible = np.zeros(k, np.float32)
    visible[classes] = 1.0
    # A flash is the one thing on screen that tells a sounding object from a silent one.
    flashing = np.zeros(k, np.float32)
    for i, times in enumerate(flashes):
      if len(times):
        flashing[classes[i]] = 1.0
    return dict(frames=frames, waveform=waveform, label=np.int32(classes[0]), labels=labels,
                visible=visible, flashing=flashing, onsets=padded,
                num_onsets=np.int32(len(onsets)))

  def _render(self, rng, classes, radius, start, velocity, low, span, flashes) -> np.ndarray:
    """Draws the objects over a plain background: (T,H,W,3) uint8, vectorised over frames."""
    t_count, size = self.num_frames, self.image_size
    frame_times = np.arange(t_count) / self.fps  # (T,)
    gain = rng.uniform(*_GAIN)
    background = np.clip(rng.uniform(*_BACKGROUND, 3) * gain, 0.0, 1.0)
    frames = np.empty((t_count, size, size, 3), np.uint8)
    # Broadcasting a 3-vector over (T,H,W,3) is slow; copying whole tiled frames is not.
    frames.reshape(t_count, -1)[:] = np.tile(np.round(background * 255).astype(np.uint8),
                                             size * size)
    # Reflection off the walls is a triangle wave of the unfolded coordinate.
    unfolded = (start - low)[None] + velocity[None] * frame_times[:, None, None]  # (T,N,2)
    folded = np.mod(unfolded, 2.0 * span[None])
    centres = low[None] + np.where(folded < span[None], folded, 2.0 * span[None] - folded)
    centres_px = centres * size  # (T, N, 2) as (x, y) in pixels.
    for i in rng.permutation(len(classes)):  # Random depth order.
      colour = np.broadcast_to(self.class_colours[classes[i]], (t_count, 3))
      if i < len(flashes) and len(flashes[i]):
        # A flash brightens towards white and fades over a frame or two.
        lag = frame_times[:, None] - flashes[i][None, :]  # (T, n_flashes)
        glow = np.where(lag >= 0, np.exp(-lag * self.fps / _FLASH_DECAY_FRAMES), 0.0)
        colour = colour + 0.85 * (1.0 - colour) * glow.max(axis=1)[:, None]
      colour = np.clip(colour * gain, 0.0, 1.0).astype(np.float32) * 255.0  # (T, 3)
      r_px = radius[i] * size
      patch = min(int(np.ceil(2.0 * r_px)) + 3, size)
      # Each frame only touches a patch x patch box around the object: cut the boxes out,
      # blend them all at once, paste them back (slicing beats fancy indexing here).
      corner = np.clip(np.floor(centres_px[:, i] - patch / 2.0).astype(np.int64), 0,
                       size - patch)  # (T, 2) as (x, y).
      offsets = np.arange(patch) + 0.5
      dx = (corner[:, 0, None] + offsets - centres_px[:, i, 0, None]) / r_px  # (T, P)
      dy = (corner[:, 1, None] + offsets - centres_px[:, i, 1, None]) / r_px
      inside = _signed_distance(int(self.class_shapes[classes[i]]),
                                dx[:, None, :].astype(np.float32),
                                dy[:, :, None].astype(np.float32))  # (T, P, P)
      alpha = np.clip(inside * np.float32(r_px) + 0.5, 0.0, 1.0)[..., None]  # 1-px soft edge.
      boxes = [(t, y, x) for t, (x, y) in enumerate(corner.tolist())]
      pixels = np.stack([frames[t, y:y + patch, x:x + patch] for t, y, x in boxes])
      pixels = pixels.astype(np.float32)  # (T, P, P, 3)
      pixels += alpha * (colour[:, None, None, :] - pixels)
      pixels = (pixels + 0.5).astype(np.uint8)
      for t, y, x in boxes:
        frames[t, y:y + patch, x:x + patch] = pixels[t]
    return frames

  def _synthesise(self, rng, event_times, event_amps, event_classes) -> np.ndarray:
    """Background noise plus each event's class kernel at its sample offset: (S,) float32."""
    n = self.num_samples
    level = np.exp(rng.uniform(np.log(_NOISE_RMS[0]), np.log(_NOISE_RMS[1])))
    waveform = rng.standard_normal(n, dtype=np.float32) * np.float32(level)
    offsets = np.round(event_times * self.sample_rate).astype(np.int64)
    for offset, amp, c in zip(offsets, event_amps, event_classes):
      if offset >= n:
        continue
      kernel = self.kernels[c][:n - offset]
      waveform[offset:offset + len(kernel)] += np.float32(amp) * kernel
    peak = np.max(np.abs(waveform))
    if peak > 0.99:  # Overlapping loud events: rescale rather than clip (keeps the spectrum).
      waveform *= np.float32(0.99 / peak)
    return waveform


def from_config(config: ml_collections.ConfigDict, split: str, *,
                with_log_mel: bool = False) -> SyntheticAVSource:
  """The synthetic source of `split` sized by `config.data.*` (its world from `data.seed`)
  and `config.audio`.

  `with_log_mel` adds `log_mel` to every clip (for direct access, not for grain workers).
  """
  if split == 'train':
    num_clips = config.data.num_train_clips
  elif split in ('test', 'validation'):
    num_clips = config.eval.num_test_clips
  else:
    raise ValueError(f'split={split!r} is unknown; expected one of {sorted(SPLITS)}')
  return SyntheticAVSource(
      split=split,
      num_clips=num_clips,
      seed=config.data.seed,
      num_classes=config.data.num_classes,
      num_frames=config.data.num_frames,
      fps=config.data.fps,
      image_size=config.data.image_size,
      sample_rate=config.audio.sample_rate,
      max_onsets=config.data.max_onsets,
      audio_cfg=config.audio if with_log_mel else None)
