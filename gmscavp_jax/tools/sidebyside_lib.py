"""What tools/torch_sidebyside.py needs without torch or flags: the fixed batch and params
both frameworks get, the comparison of outputs and gradients, the report, a timer.

Params travel between processes as a '/'-keyed .npz of the Flax tree (`save_params`); the
torch side turns it into its own layout with tools/torch_layout.py.
"""

import statistics
import time

import jax
import numpy as np

from gmscavp_jax.models import unet as unet_lib

FORWARD_BATCHES = (1, 2, 32)
TRAIN_BATCH = 32
MATMUL = 2048  # The peak: a (MATMUL x MATMUL) @ (MATMUL x MATMUL) float32 matmul.
ROWS = [f'forward_b{b}' for b in FORWARD_BATCHES] + [f'train_b{TRAIN_BATCH}']


def video_shapes(config) -> list[tuple[int, int, int]]:
  """(T_l,S_l,D) of each video scale the UNet gets (as steps.dummy_video_scales)."""
  m = config.model
  return [(config.data.num_frames // p, g * g, m.embed_dim)
          for p, g in zip(m.scale_pools, m.scale_grids)]


def make_batch(config, batch_size: int, seed: int, mel_frames: int) -> dict[str, np.ndarray]:
  """A fixed float32 batch: x0, eps (B,Ta,F), a, s (B,) with a^2+s^2 = 1, t (B,) int32,
  video scales 'video_l' (B,T_l,S_l,D), drop (B,) bool (every 8th example, from the 2nd)."""
  rng = np.random.default_rng(seed)
  shape = (batch_size, mel_frames, config.audio.n_mels)
  phi = rng.uniform(0.05, 1.5, batch_size).astype(np.float32)
  batch = {'x0': rng.standard_normal(shape, np.float32),
           'eps': rng.standard_normal(shape, np.float32),
           'a': np.cos(phi), 's': np.sin(phi),
           't': rng.integers(0, config.diffusion.num_timesteps, batch_size).astype(np.int32),
           'drop': (np.arange(batch_size) % 8) == 1}
  for l, (t, s, d) in enumerate(video_shapes(config)):
    batch[f'video_{l}'] = rng.standard_normal((batch_size, t, s, d), np.float32)
  return batch


def scales_of(batch: dict) -> list:
  """The batch's video scales [(B,T_l,S_l,D)], finest first."""
  return [batch[f'video_{l}'] for l in range(sum(k.startswith('video_') for k in batch))]


def randomised_params(config, seed: int, mel_frames: int) -> dict:
  """Random Flax UNet params (nested dict of numpy float32) with the tree of an init for
  x (1,mel_frames,F): kernels N(0, 1/fan_in), norm scales 1 + N(0, 0.1^2), everything else
  N(0, 0.1^2). An init's zero output projections would leave most of the UNet untested."""
  unet = unet_lib.build_unet(config)
  mel = np.zeros((1, mel_frames, config.audio.n_mels), np.float32)
  video = [np.zeros((1,) + s, np.float32) for s in video_shapes(config)]
  shapes = jax.eval_shape(unet.init, jax.random.key(seed), mel, np.zeros((1,), np.int32),
                          video)['params']
  leaves, treedef = jax.tree.flatten_with_path(shapes)
  rng = np.random.default_rng(seed)
  out = []
  for path, leaf in leaves:
    x = rng.standard_normal(leaf.shape, np.float32)
    name = path[-1].key
    if name == 'kernel':
      x /= np.float32(np.sqrt(np.prod(leaf.shape[:-1])))
    else:
      x *= np.float32(0.1)
      if name == 'scale':
        x += np.float32(1.0)
    out.append(x)
  return jax.tree.unflatten(treedef, out)


def save_params(params: dict, path: str) -> None:
  """A nested params dict of arrays -> an .npz with '/'-joined keys."""
  flat = {}

  def walk(tree, prefix):
    for k, v in tree.items():
      if isinstance(v, dict):
        walk(v, prefix + (k,))
      else:
        flat['/'.join(prefix + (k,))] = np.asarray(v)

  walk(params, ())
  np.savez(path, **flat)


def load_params(path: str) -> dict:
  """Inverse of `save_params`."""
  tree = {}
  with np.load(path) as f:
    for key in f.files:
      *parents, leaf = key.split('/')
      node = tree
      for p in parents:
        node = node.setdefault(p, {})
      node[leaf] = f[key]
  return tree


def relative_error(got: np.ndarray, want: np.ndarray) -> float:
  """max |got - want| / max |want| (0 when both are 0)."""
  scale = float(np.max(np.abs(want)))
  diff = float(np.max(np.abs(np.asarray(got, np.float64) - want)))
  return diff / scale if scale > 0 else diff


def leaf_errors(got: dict, want: dict) -> dict[str, float]:
  """{path: max |got - want| / max(max |want|, floor)} over the leaves of two same-shaped
  trees, with floor = 1e-3 x the largest max |want| of any leaf: a leaf whose gradient is
  zero in exact arithmetic (the keys' bias under softmax) holds only rounding noise, which
  is measured against the tree's scale instead of its own."""
  flat = {}

  def walk(g, w, prefix):
    for k, v in w.items():
      if isinstance(v, dict):
        walk(g[k], v, f'{prefix}/{k}')
      else:
        flat[f'{prefix}/{k}'] = (np.asarray(g[k], np.float64), np.asarray(v, np.float64))

  walk(got, want, '')
  floor = 1e-3 * max(float(np.max(np.abs(w))) for _, w in flat.values())
  return {p: float(np.max(np.abs(g - w))) / max(float(np.max(np.abs(w))), floor)
          for p, (g, w) in flat.items()}


def summarise(rounds: list[dict]) -> dict:
  """Child results {'round', 'jax': {row: s}, 'torch': {...}} -> per-row medians (seconds),
  ratio torch / JAX, and the matmul peak's median GFLOP/s per framework."""
  rows = {}
  for row in ROWS:
    j = statistics.median(r['jax'][row] for r in rounds)
    t = statistics.median(r['torch'][row] for r in rounds)
    rows[row] = {'jax_ms': 1e3 * j, 'torch_ms': 1e3 * t, 'torch_over_jax': t / j}
  peak = {fw: statistics.median(r[fw]['peak_gflops'] for r in rounds)
          for fw in ('jax', 'torch')}
  return {'rows': rows, 'peak_gflops': peak}


def markdown(summary: dict, meta: dict) -> str:
  """The report's table: one line per measurement (ratio above 1: JAX is faster), the
  matmul peak as the best call's time and GFLOP/s, then the conditions."""
  lines = ['| measurement | JAX ms | torch ms | torch / JAX |', '| --- | --- | --- | --- |']
  for row, r in summary['rows'].items():
    lines.append(f"| {row} | {r['jax_ms']:.2f} | {r['torch_ms']:.2f} | "
                 f"{r['torch_over_jax']:.2f} |")
  p = summary['peak_gflops']
  ms = {fw: 2e-6 * MATMUL**3 / p[fw] for fw in p}  # GFLOP/s -> ms per matmul.
  lines.append(f"| matmul {MATMUL}^3 float32, best (GFLOP/s) | {ms['jax']:.1f} "
               f"({p['jax']:.1f}) | {ms['torch']:.1f} ({p['torch']:.1f}) | "
               f"{ms['torch'] / ms['jax']:.2f} |")
  lines += ['', '; '.join(f'{k}: {v}' for k, v in meta.items())]
  return '\n'.join(lines) + '\n'


def timed(fn, min_seconds: float, warmup: int = 3, min_calls: int = 5) -> float:
  """Median seconds of one call of `fn` (which must block until its work is done), over
  at least `min_calls` calls and `min_seconds`, after `warmup` calls."""
  for _ in range(warmup):
    fn()
  times, start = [], time.perf_counter()
  while len(times) < min_calls or time.perf_counter() - start < min_seconds:
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def best_gflops(fn, repeats: int) -> float:
  """GFLOP/s of the fastest of `repeats` calls of `fn`, one warm (MATMUL^3) matmul each."""
  fn()
  best = min(timed(fn, 0.0, warmup=0, min_calls=1) for _ in range(repeats))
  return 2 * MATMUL**3 / best / 1e9
