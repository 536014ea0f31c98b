"""How sure an evaluation's numbers are: bootstrap intervals over clips, and FAD-inf.

A metric of N test clips is one draw from the clips the benchmark could have held. The
bootstrap resamples the N clips with replacement, recomputes the metric on each resample
and reports the 2.5 and 97.5 percentiles: a 95% interval over clips, so a reader can tell
a difference between two runs from the luck of the clips (`bootstrap_interval`). The
percentiles are moved by the distance from the resamples' median to the metric of all
clips. For a mean (accuracy, recall, KLD) that shift is about 0. FAD needs it: a resample
holds only about 0.63 N distinct clips, and FAD grows as the number of clips shrinks, so
the plain percentiles of FAD would lie above the FAD of all clips. The resamples are drawn
from a fixed seed, so an evaluation's intervals are reproducible.

FAD is biased upwards by a term that shrinks like 1/N with the number of generated clips
N, so FADs from different N are not comparable. FAD-inf (Chong & Forsyth 2020 for FID,
Gui et al. 2024 for FAD) computes FAD on random subsets of several sizes, fits
FAD(N) = FAD_inf + slope / N and reports the intercept: FAD at infinitely many clips.
The literature fits one subset per size from tens of thousands of clips; an evaluation
here has a few hundred, where which clips land in each subset moves the intercept by about
as much as the bias it removes, so each size is drawn several times (DRAWS_PER_SIZE).
"""

from collections.abc import Callable

import numpy as np

from gmscavp_jax.evaluators import metrics

NUM_RESAMPLES = 1000
LEVEL = 0.95
SEED = 0
# FAD-inf's subsets per size: from 1 to 8 the intercept's spread over subset draws fell
# from 1.75 to 0.84 (64 clips) and 0.55 to 0.11 (256 clips) on a runlocal checkpoint.
DRAWS_PER_SIZE = 8


def bootstrap_interval(statistic: Callable[[np.ndarray], float], n: int, *,
                       num_resamples: int = NUM_RESAMPLES, level: float = LEVEL,
                       seed: int = SEED) -> tuple[float, float]:
  """Percentile-bootstrap interval of a metric over `n` clips.

  The percentiles are re-centred on statistic(all clips) (see the module docstring).

  Args:
    statistic: (n,) int clip indices, with repeats -> the metric of those clips (float).
    n: number of clips.
    num_resamples: resamples drawn (each n clips with replacement).
    level: coverage, in (0, 1).
    seed: seed of the resampling.
  Returns:
    (low, high); (nan, nan) for fewer than 2 clips (nothing to resample).
  """
  if not 0 < level < 1:
    raise ValueError(f'level={level}: expected a coverage in (0, 1)')
  if n < 2:
    return float('nan'), float('nan')
  rng = np.random.default_rng(seed)
  values = np.array([statistic(rng.integers(0, n, n)) for _ in range(num_resamples)])
  tail = (1.0 - level) / 2
  low, median, high = np.quantile(values, [tail, 0.5, 1.0 - tail])
  shift = statistic(np.arange(n)) - median
  return float(low + shift), float(high + shift)


def interval_keys(key: str, statistic: Callable[[np.ndarray], float], n: int,
                  **kwargs) -> dict:
  """{KEY_ci95_low, KEY_ci95_high}: `bootstrap_interval` of `statistic` as results keys."""
  low, high = bootstrap_interval(statistic, n, **kwargs)
  return {f'{key}_ci95_low': low, f'{key}_ci95_high': high}


def fad_to(embeddings: np.ndarray, ref_stats: tuple) -> float:
  """`metrics.fad` against a reference's precomputed `metrics.gaussian_stats`."""
  return metrics.frechet_distance(*metrics.gaussian_stats(embeddings), *ref_stats)


def fad_inf(embeddings: np.ndarray, reference: np.ndarray, *, num_sizes: int = 15,
            min_fraction: float = 0.25, draws_per_size: int = DRAWS_PER_SIZE,
            seed: int = SEED) -> dict:
  """FAD of `embeddings` (N,D) against `reference` (M,D), extrapolated to N -> infinity.

  FAD is computed for `num_sizes` subset sizes, evenly spaced in 1/N between
  min_fraction * N and N, on `draws_per_size` random subsets of each size below N (without
  replacement, always against all of `reference`), and a least-squares line
  FAD = fad_inf + slope / N is fitted to all of them. With a few hundred clips one subset
  per size leaves the intercept at the mercy of which clips were drawn; several draws
  average that out (module docstring).

  Returns:
    {'fad_inf', 'fad_inf_slope'}; nan for fewer than 4 clips.
  """
  if draws_per_size < 1:
    raise ValueError(f'draws_per_size={draws_per_size}: expected at least 1 subset per size')
  n = len(embeddings)
  ref_stats = metrics.gaussian_stats(reference)
  smallest = max(int(round(min_fraction * n)), 2)
  if n < 4 or smallest >= n:
    return {'fad_inf': float('nan'), 'fad_inf_slope': float('nan')}
  rng = np.random.default_rng(seed)
  inverse = np.linspace(1.0 / smallest, 1.0 / n, num_sizes)
  sizes = np.unique(np.round(1.0 / inverse).astype(int))
  # The whole set is one subset however often it is drawn.
  sizes = np.concatenate([np.repeat(sizes[sizes < n], draws_per_size), sizes[sizes == n]])
  fads = [fad_to(embeddings[rng.choice(n, size, replace=False)], ref_stats)
          for size in sizes]
  slope, intercept = np.polyfit(1.0 / sizes, fads, 1)
  return {'fad_inf': float(intercept), 'fad_inf_slope': float(slope)}
