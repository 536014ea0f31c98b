"""Pictures of results: similarity matrices, loss curves, spectrograms (matplotlib, Agg)."""

import io

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np


def _save_and_decode(fig, path: str) -> np.ndarray:
  """Renders `fig` once: writes the PNG to `path` and returns it as (H, W, 3) uint8."""
  buf = io.BytesIO()
  fig.savefig(buf, format='png', dpi=100)
  plt.close(fig)
  with open(path, 'wb') as f:
    f.write(buf.getvalue())
  buf.seek(0)
  return (plt.imread(buf, format='png')[..., :3] * 255).astype(np.uint8)


def similarity_matrix(sim: np.ndarray, path: str, title: str, labels: np.ndarray | None = None,
                      max_clips: int = 128) -> np.ndarray:
  """Saves the (N, N) video x audio similarity matrix as a PNG; returns it as (H, W, 3) uint8.

  The first `max_clips` clips are drawn, sorted by their class `labels` (N,) when given, so
  class blocks show as squares and each clip's own pair lies on the diagonal.
  """
  n = min(len(sim), max_clips)
  order = np.arange(n) if labels is None else np.argsort(labels[:n], kind='stable')
  fig, ax = plt.subplots(figsize=(5.5, 5))
  im = ax.imshow(sim[np.ix_(order, order)], cmap='viridis', interpolation='nearest')
  by = ', sorted by class' if labels is not None else ''
  ax.set_xlabel('audio clip')
  ax.set_ylabel('video clip')
  ax.set_title(f'{title}\nfirst {n} of {len(sim)} test clips{by}', fontsize=9)
  fig.colorbar(im, ax=ax, label='cosine similarity')
  fig.tight_layout()
  return _save_and_decode(fig, path)


LOSS_KEYS = ('train/loss', 'train/loss/msa', 'train/loss/msd_loss', 'train/loss/a2v_loss')


def loss_curves(rows: list[dict], path: str, keys=LOSS_KEYS) -> None:
  """Saves a PNG of each key of `rows` (metrics.jsonl rows) against step (log-y if > 0)."""
  fig, ax = plt.subplots(figsize=(6, 3.5))
  for key in keys:
    pts = [(r['step'], r[key]) for r in rows if key in r]
    if pts:
      steps, values = zip(*pts)
      ax.plot(steps, values, label=key)
  ax.set_xlabel('step')
  if all(r[k] > 0 for r in rows for k in keys if k in r):
    ax.set_yscale('log')
  ax.legend()
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def spectrograms(generated: np.ndarray, path: str, title: str, real: np.ndarray | None = None,
                 frame_rate: float | None = None, onsets: list | None = None,
                 names: tuple[str, str] = ('generated', 'real')) -> np.ndarray:
  """Saves generated log-mels (N,Ta,F) (beside the real ones, when given) as one PNG.

  Row i shows clip i: generated, then real (the panel titles say `names`). `frame_rate`
  (frames/s) labels time in seconds; `onsets` (N lists of seconds) marks the true sound
  onsets. Returns the PNG (H, W, 3) uint8.
  """
  n = len(generated)
  cols = 1 if real is None else 2
  fig, axes = plt.subplots(n, cols, figsize=(4 * cols, 1.8 * n + 0.6), squeeze=False)
  extent_t = generated.shape[1] / frame_rate if frame_rate else generated.shape[1]
  # One colour scale, from the real audio when there is one: outliers of a poor sample would
  # otherwise wash out both pictures.
  vmin, vmax = (float(v) for v in np.percentile(real if real is not None else generated,
                                                 [0.5, 99.9]))
  for i in range(n):
    for j, (name, mel) in enumerate([(names[0], generated)] +
                                    ([(names[1], real)] if real is not None else [])):
      ax = axes[i, j]
      ax.imshow(mel[i].T, origin='lower', aspect='auto', cmap='magma', vmin=vmin, vmax=vmax,
                extent=(0, extent_t, 0, mel.shape[2]))
      if onsets is not None:
        for t in onsets[i]:
          ax.axvline(t, color='cyan', lw=0.6, alpha=0.8)
      ax.set_title(f'clip {i}: {name}', fontsize=8)
      ax.tick_params(labelsize=6)
      if i == n - 1:
        ax.set_xlabel('seconds' if frame_rate else 'frame', fontsize=7)
      if j == 0:
        ax.set_ylabel('mel bin', fontsize=7)
  fig.suptitle(title, fontsize=9)
  fig.tight_layout()
  return _save_and_decode(fig, path)


def ablation_bars(aggregate: dict, path: str, metrics) -> np.ndarray:
  """Saves Table 3 as bar charts, one subplot per metric; returns the PNG as (H, W, 3) uint8.

  `aggregate` is `ablation.aggregate(...)`'s dict; `metrics` a sequence of (results key, label,
  lower_is_better). Each config is a bar (mean, std error bar) with its seeds as dots; the
  ground-truth audio's value, where there is one, is a dashed line.
  """
  names = list(aggregate['configs'])
  cols = min(3, len(metrics))
  rows = -(-len(metrics) // cols)
  fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3 * rows), squeeze=False)
  x = np.arange(len(names))
  for ax, (key, label, lower) in zip(axes.flat, metrics):
    stats = [aggregate['configs'][n] for n in names]
    means = [np.nan if s['mean'].get(key) is None else s['mean'][key] for s in stats]
    stds = [s['std'].get(key) or 0.0 for s in stats]
    ax.bar(x, means, yerr=stds, capsize=3, color='tab:blue', alpha=0.6)
    for i, s in enumerate(stats):
      values = s['values'].get(key, [])
      # Spread the seeds a little so that equal values stay visible.
      spread = np.linspace(-0.12, 0.12, len(values)) if len(values) > 1 else 0.0
      ax.scatter(i + np.zeros(len(values)) + spread, values, color='black', s=10, zorder=3)
    ref = aggregate['ref']['gt'].get(key)
    if ref is not None:
      ax.axhline(ref, color='tab:green', ls='--', lw=1, label='ground truth')
      ax.legend(fontsize=7)
    name = label.rstrip(' ↓↑')
    ax.set_title(f'{name} {"↓" if lower else "↑"}', fontsize=9)
    ax.set_xticks(x, names, fontsize=7)
    ax.grid(axis='y', alpha=0.3)
  for ax in list(axes.flat)[len(metrics):]:
    ax.axis('off')
  fig.tight_layout()
  return _save_and_decode(fig, path)


def study_lines(series: dict, path: str, metrics, xlabel: str, *, log_x: bool = False,
                xticks=None, title: str = '') -> np.ndarray:
  """Saves a study's metrics against its variable, one subplot per metric; returns the PNG.

  `series` maps a name to [(x, results dict)]: a line per name with 2+ points, a lone marker
  otherwise. `metrics` is a sequence of (results key, label, lower_is_better); `xticks` an
  optional [(x, label)] for a categorical variable.
  """
  cols = min(3, len(metrics))
  rows = -(-len(metrics) // cols)
  fig, axes = plt.subplots(rows, cols, figsize=(3.8 * cols, 3 * rows), squeeze=False)
  if log_x and not xticks:  # Ticks at the lines' values, written plainly (a lone marker's
    # x, e.g. a mixture's total clips, would print over a neighbouring tick; the legend names it).
    lines = [pts for pts in series.values() if len(pts) > 1] or list(series.values())
    xticks = [(x, f'{x:g}') for x in sorted({x for pts in lines for x, _ in pts})]
  for ax, (key, label, lower) in zip(axes.flat, metrics):
    for name, points in series.items():
      pts = sorted((x, r[key]) for x, r in points if r.get(key) is not None)
      if pts:
        xs, ys = zip(*pts)
        ax.plot(xs, ys, 'o-' if len(pts) > 1 else 's', label=name, ms=4)
    ax.set_title(f'{label.rstrip(" ↓↑")} {"↓" if lower else "↑"}', fontsize=9)
    ax.set_xlabel(xlabel, fontsize=8)
    if log_x:
      ax.set_xscale('log')
    if xticks:
      ax.minorticks_off()
      ax.set_xticks([x for x, _ in xticks], [t for _, t in xticks], fontsize=7)
    ax.tick_params(labelsize=7)
    ax.ticklabel_format(axis='y', useOffset=False)
    ax.grid(alpha=0.3)
  handles, labels = axes.flat[0].get_legend_handles_labels()
  if len(labels) > 1:
    fig.legend(handles, labels, loc='lower center', ncol=min(4, len(labels)), fontsize=7)
  for ax in list(axes.flat)[len(metrics):]:
    ax.axis('off')
  if title:
    fig.suptitle(title, fontsize=10)
  fig.tight_layout(rect=(0, 0.06 if len(labels) > 1 else 0, 1, 1))
  return _save_and_decode(fig, path)


def frame_strip(generated: np.ndarray, path: str, title: str, real: np.ndarray | None = None,
                fps: float | None = None, onsets: list | None = None) -> np.ndarray:
  """Saves generated clips (N,T,h,w,3) uint8 as rows of frames, each above its real frames.

  Frame j of a row is the clip at j / fps seconds; `onsets` (N lists of seconds, with `fps`)
  marks the sound onsets of each clip above its frames. Returns the PNG (H, W, 3) uint8.
  """
  n, t, h, w, _ = generated.shape
  rows = [(i, name, clips[i]) for i in range(n)
          for name, clips in [('generated', generated)] + ([('real', real)] if real is not None
                                                           else [])]
  gap = max(1, w // 16)
  width_in = min(14.0, max(6.0, 0.7 * t + 0.5))
  row_in = width_in * h / (t * (w + gap)) + 0.35
  fig, axes = plt.subplots(len(rows), 1, figsize=(width_in, row_in * len(rows) + 0.8),
                           squeeze=False)
  for r, (ax, (i, name, clip)) in enumerate(zip(axes[:, 0], rows)):
    strip = np.full((h, t * (w + gap) - gap, 3), 255, np.uint8)
    for j in range(t):
      strip[:, j * (w + gap):j * (w + gap) + w] = clip[j]
    ax.imshow(strip, interpolation='nearest')
    if onsets is not None and fps:
      for onset in onsets[i]:
        ax.plot(onset * fps * (w + gap), -0.5, marker='v', color='tab:cyan', ms=5, clip_on=False)
    ax.set_title(f'clip {i}: {name}', fontsize=8, loc='left')
    ax.set_yticks([])
    if r == len(rows) - 1:  # Frame times once, under the last row.
      ax.set_xticks([j * (w + gap) + w / 2 for j in range(t)],
                    [f'{j / fps:.2f}' if fps else str(j) for j in range(t)], fontsize=6)
      ax.set_xlabel('seconds' if fps else 'frame', fontsize=7)
    else:
      ax.set_xticks([])
  if onsets is not None and fps:
    title += '\n(triangles: sound onsets)'
  fig.suptitle(title, fontsize=9)
  fig.tight_layout()
  return _save_and_decode(fig, path)
