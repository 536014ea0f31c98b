"""A small real audio-visual set: spoken digits (FSDD) heard, handwritten digits seen.

Each clip has one digit class. Its soundtrack holds 1-2 real recordings of that digit from
the Free Spoken Digit Dataset (FSDD, CC BY-SA 4.0; `{digit}_{speaker}_{take}.wav`, 8 kHz) at
random, non-overlapping start times; its video shows one real handwritten image of the same
digit (scikit-learn's copy of the UCI optical digits, 8x8 grey levels 0-16), upscaled and
drifting gently from a random position. The image is bright on exactly the frames whose
centre time lies inside an utterance and dim on the others, so both the class and the
timing of the sound have a real counterpart in the picture.

Test clips use other speakers' recordings and a disjoint slice of the images, so retrieval
on them measures what carries over to unseen voices and handwriting.

Output (the `generic` layout of layouts.py): OUT/VIDEOS/{split}_{index:05d}.mp4 and
OUT/digits_av.csv with a `path,label,split` header and the label the digit ('0'-'9', so the
sorted names list the classes in digit order).
"""

import csv
import dataclasses
import os
import re

import numpy as np
import scipy.io.wavfile
import scipy.ndimage
import scipy.signal
import tqdm

from gmscavp_jax.data import media_writing

CSV_NAME = 'digits_av.csv'
VIDEO_DIR = 'VIDEOS'
NUM_CLASSES = 10
_FSDD_NAME = re.compile(r'^(\d)_([A-Za-z]+)_(\d+)\.wav$')
# Silence trimming: an utterance spans the 10 ms windows whose RMS is above this share of its
# loudest window's (FSDD files carry a little silence and noise around each word).
_TRIM_WINDOW_SECONDS = 0.01
_TRIM_SHARE = 0.1


@dataclasses.dataclass(frozen=True)
class Geometry:
  """The clip geometry: T frames at `fps`, H = W = `image_size`, audio at `sample_rate`."""
  num_frames: int
  fps: float
  image_size: int
  sample_rate: int

  @property
  def num_samples(self) -> int:
    """Audio samples per clip: round(T / fps * sample_rate)."""
    return int(round(self.num_frames / self.fps * self.sample_rate))


@dataclasses.dataclass(frozen=True)
class Recording:
  """One FSDD file: its digit, speaker, take index and path."""
  digit: int
  speaker: str
  take: int
  path: str


def find_recordings(folder: str) -> list[Recording]:
  """The FSDD wavs under `folder` (searched recursively), sorted by path.

  Raises:
    FileNotFoundError: `folder` has no file named like `{digit}_{speaker}_{take}.wav`.
  """
  found = []
  for root, _, names in os.walk(folder):
    for name in names:
      if match := _FSDD_NAME.match(name):
        found.append(Recording(int(match[1]), match[2], int(match[3]),
                               os.path.join(root, name)))
  if not found:
    raise FileNotFoundError(f'{folder}: no FSDD recordings ({{digit}}_{{speaker}}_{{take}}.wav)')
  return sorted(found, key=lambda r: r.path)


def load_utterance(path: str, sample_rate: int, max_seconds: float) -> np.ndarray:
  """A recording as (S,) float32 at `sample_rate`, silence trimmed, peak 1, <= max_seconds."""
  rate, data = scipy.io.wavfile.read(path)
  data = np.asarray(data)
  if data.ndim > 1:
    data = data.mean(axis=1)
  if np.issubdtype(data.dtype, np.integer):
    data = data.astype(np.float32) / np.float32(np.iinfo(data.dtype).max)
  wave = data.astype(np.float32)
  if rate != sample_rate:
    g = np.gcd(int(rate), int(sample_rate))
    wave = scipy.signal.resample_poly(wave, sample_rate // g, rate // g).astype(np.float32)
  window = max(1, int(round(_TRIM_WINDOW_SECONDS * sample_rate)))
  n = len(wave) // window
  if n:
    rms = np.sqrt(np.mean(wave[:n * window].reshape(n, window) ** 2, axis=1))
    loud = np.flatnonzero(rms > _TRIM_SHARE * rms.max())
    if loud.size:
      wave = wave[loud[0] * window:(loud[-1] + 1) * window]
  wave = wave[:int(max_seconds * sample_rate)]
  peak = float(np.max(np.abs(wave), initial=0.0))
  return wave / np.float32(peak) if peak > 0 else wave


def load_sklearn_digits() -> tuple[np.ndarray, np.ndarray]:
  """scikit-learn's 1797 handwritten digits: images (N, 8, 8) float in [0, 1], labels (N,).

  Raises:
    ImportError: scikit-learn is not installed (it is not a dependency of this package).
  """
  try:
    from sklearn import datasets  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError('the handwritten digit images come with scikit-learn: '
                      'pip install scikit-learn') from e
  digits = datasets.load_digits()
  return digits.images.astype(np.float32) / 16.0, digits.target.astype(np.int64)


def bright_frames(intervals, geometry: Geometry) -> np.ndarray:
  """(T,) bool: frame i is bright iff its centre time (i + 0.5) / fps lies in an interval.

  Args:
    intervals: (start, end) seconds of each utterance in the clip.
    geometry: the clip geometry.
  """
  centres = (np.arange(geometry.num_frames) + 0.5) / geometry.fps
  bright = np.zeros(geometry.num_frames, bool)
  for start, end in intervals:
    bright |= (centres >= start) & (centres < end)
  return bright


def place_utterances(lengths, geometry: Geometry, rng: np.random.Generator,
                     gap_seconds: float = 0.25) -> list[tuple[float, float]] | None:
  """Random non-overlapping (start, end) seconds for utterances of `lengths` samples, in
  order, at least `gap_seconds` apart and inside the clip; None if they do not fit."""
  duration = geometry.num_samples / geometry.sample_rate
  seconds = [n / geometry.sample_rate for n in lengths]
  slack = duration - sum(seconds) - gap_seconds * (len(seconds) - 1)
  if slack < 0:
    return None
  # Split the slack at random between the space before, between and after the utterances.
  cuts = np.sort(rng.uniform(0, slack, len(seconds)))
  intervals, t = [], 0.0
  for i, length in enumerate(seconds):
    start = t + cuts[i] - (cuts[i - 1] if i else 0.0)
    # Whole samples, so the audio's extent and the interval agree exactly.
    start = int(start * geometry.sample_rate) / geometry.sample_rate
    intervals.append((start, start + length))
    t = start + length + gap_seconds
  return intervals


def render_clip(utterances, image: np.ndarray, geometry: Geometry, rng: np.random.Generator,
                *, dim: float = 0.2) -> tuple[np.ndarray, np.ndarray, list]:
  """One clip: frames (T, H, W, 3) uint8, waveform (S,) float32, utterance intervals.

  Args:
    utterances: 1-D float arrays at geometry.sample_rate, peak 1 (see `load_utterance`);
      those that do not fit in the clip with the others are dropped from the end.
    image: (h, w) float in [0, 1], the handwritten digit (white on black).
    geometry: the clip geometry.
    rng: the clip's random generator (size, position, motion, gain, placement).
    dim: the image's brightness on frames without sound (1 on frames with sound).

  Returns:
    frames, waveform, and the (start, end) seconds of each utterance placed.
  """
  utterances = list(utterances)
  while (intervals := place_utterances([len(u) for u in utterances], geometry, rng)) is None:
    utterances.pop()
    if not utterances:
      raise ValueError('an utterance is longer than the clip')
  waveform = np.zeros(geometry.num_samples, np.float32)
  for wave, (start, _) in zip(utterances, intervals):
    i = int(round(start * geometry.sample_rate))
    waveform[i:i + len(wave)] += wave * np.float32(rng.uniform(0.5, 0.8))
  size = geometry.image_size
  side = int(rng.integers(size * 3 // 8, size // 2 + 1))  # 24-32 px at 64 px.
  sprite = scipy.ndimage.zoom(np.asarray(image, np.float32), side / np.asarray(image).shape[0],
                              order=1)
  sprite = np.clip(sprite, 0.0, 1.0)
  side = sprite.shape[0]
  free = size - side
  # A gentle straight drift (at most ~1 px per frame) from a random start, kept in frame.
  start = rng.uniform(0, free, 2)
  end = np.clip(start + rng.uniform(-1, 1, 2) * geometry.num_frames, 0, free)
  bright = bright_frames(intervals, geometry)
  frames = np.zeros((geometry.num_frames, size, size, 3), np.uint8)
  for t in range(geometry.num_frames):
    y, x = np.round(start + (end - start) * t / max(1, geometry.num_frames - 1)).astype(int)
    level = 1.0 if bright[t] else dim
    frames[t, y:y + side, x:x + side] = np.round(255 * level * sprite)[..., None]
  return frames, waveform, intervals


def _split_sources(recordings, labels, test_speakers, test_image_share):
  """{split: (recordings by digit, image indices by digit)} with disjoint speakers/images."""
  speakers = {r.speaker for r in recordings}
  unknown = set(test_speakers) - speakers
  if unknown or not speakers - set(test_speakers):
    raise ValueError(f'test_speakers={sorted(test_speakers)}: expected some, not all, of the '
                     f'speakers found {sorted(speakers)}')
  n_test_images = int(round(len(labels) * test_image_share))
  if not 0 < n_test_images < len(labels):
    raise ValueError(f'test_image_share={test_image_share} leaves no train or test images')
  first_test = len(labels) - n_test_images  # The last images are the test ones.
  sources = {}
  for split in ('train', 'test'):
    in_split = lambda r, s=split: (r.speaker in test_speakers) == (s == 'test')
    by_digit = {d: [r for r in recordings if r.digit == d and in_split(r)]
                for d in range(NUM_CLASSES)}
    images = np.arange(first_test, len(labels)) if split == 'test' else np.arange(first_test)
    image_ids = {d: images[labels[images] == d] for d in range(NUM_CLASSES)}
    empty = [d for d in range(NUM_CLASSES) if not len(by_digit[d]) or not len(image_ids[d])]
    if empty:
      raise ValueError(f'the {split} split has no recording or image of digits {empty}')
    sources[split] = (by_digit, image_ids)
  return sources


def build(out: str, recordings: list[Recording], images: np.ndarray, labels: np.ndarray,
          geometry: Geometry, *, num_train: int, num_test: int, test_speakers=('theo',),
          test_image_share: float = 0.2, seed: int = 0, max_utterances: int = 2,
          dim: float = 0.2) -> dict:
  """Writes the set into `out` (see the module docstring) and returns a summary.

  Args:
    out: the output folder (created if needed).
    recordings: the FSDD recordings (`find_recordings`).
    images: (N, h, w) float in [0, 1] handwritten digits; labels: (N,) their digits.
    geometry: the clip geometry.
    num_train, num_test: clips per split; class d gets clips i with i % 10 == d (balanced).
    test_speakers: the speakers whose recordings only the test split uses.
    test_image_share: the share of images (the last ones) only the test split uses.
    seed: the seed of every random choice.
    max_utterances: each clip has 1 to this many utterances.
    dim: the image's brightness while no utterance sounds.

  Returns:
    {'csv': path, 'train': n, 'test': n, 'utterances': total placed}.
  """
  labels = np.asarray(labels)
  sources = _split_sources(recordings, labels, set(test_speakers), test_image_share)
  rng = np.random.default_rng(seed)
  cache = {}
  max_seconds = geometry.num_samples / geometry.sample_rate / 2
  rows, placed = [], 0
  for split, count in (('train', num_train), ('test', num_test)):
    by_digit, image_ids = sources[split]
    for index in tqdm.tqdm(range(count), desc=f'digits_av {split}', unit='clip'):
      digit = index % NUM_CLASSES
      takes = rng.choice(len(by_digit[digit]), int(rng.integers(1, max_utterances + 1)))
      waves = []
      for take in takes:
        path = by_digit[digit][take].path
        if path not in cache:
          cache[path] = load_utterance(path, geometry.sample_rate, max_seconds)
        waves.append(cache[path])
      image = images[int(rng.choice(image_ids[digit]))]
      frames, waveform, intervals = render_clip(waves, image, geometry, rng, dim=dim)
      placed += len(intervals)
      rel = f'{VIDEO_DIR}/{split}_{index:05d}.mp4'
      media_writing.write_video(os.path.join(out, rel), frames, geometry.fps, waveform,
                                geometry.sample_rate)
      rows.append((rel, str(digit), split))
  csv_path = os.path.join(out, CSV_NAME)
  with open(csv_path, 'w', newline='', encoding='utf-8') as f:
    writer = csv.writer(f)
    writer.writerow(('path', 'label', 'split'))
    writer.writerows(rows)
  return {'csv': csv_path, 'train': num_train, 'test': num_test, 'utterances': placed}
