"""Classifier-free guidance: the guided model output, one batched call for both halves, and
guidance in a limited interval of noise levels.

The samplers (`samplers.py`) call `guided_output` at every model query; `BatchedDenoiser`
lets a guided query run the conditional and unconditional halves as one call of twice the
batch, and `guided_steps` picks the queries that are guided at all.
"""

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

GuidedDenoiseFn = Callable[[jnp.ndarray, jnp.ndarray, bool], jnp.ndarray]


def tile_batch(tree, times: int):
  """Every array (B, ...) of `tree` repeated `times` times along the batch: (times*B, ...),
  the condition of a `BatchedDenoiser.masked` call on x stacked `times` times (None stays)."""
  return jax.tree.map(lambda a: jnp.tile(a, (times,) + (1,) * (a.ndim - 1)), tree)


class BatchedDenoiser(NamedTuple):
  """A denoiser that can run guided and unguided examples in one call.

  single: the GuidedDenoiseFn (x (B, ...), t (B,), conditional: static bool) -> (B, ...),
    called for guidance 0 and 1 (and by any code that treats this as a plain denoise_fn).
  masked: (x (B, ...), t (B,), conditional (B,) bool array) -> (B, ...): example b sees its
    condition where conditional[b] and the learned null where not (the UNet's
    drop_condition = ~conditional), so `guided_output` stacks the unconditional and the
    conditional halves into one call of twice the batch.
  """
  single: GuidedDenoiseFn
  masked: Callable[[jnp.ndarray, jnp.ndarray, jnp.ndarray], jnp.ndarray]

  def __call__(self, x: jnp.ndarray, t: jnp.ndarray, conditional: bool) -> jnp.ndarray:
    return self.single(x, t, conditional)


def guided_output(denoise_fn: GuidedDenoiseFn | BatchedDenoiser, x: jnp.ndarray,
                  t: jnp.ndarray, guidance_scale: float,
                  guided: jnp.ndarray | None = None) -> jnp.ndarray:
  """Classifier-free guidance on the raw model output: uncond + w (cond - uncond).

  Combined in the model's own output space (eps or v). For a fixed x_t, x0 and eps are
  affine in that output and the weights (1 - w, w) sum to 1, so this is the same guidance
  in eps, v or x0 space. w = 1 calls only the conditional model and w = 0 only the
  unconditional one (w is a static Python float), which saves a call and makes w = 1
  bit-identical to conditional-only sampling. Any other w calls a `BatchedDenoiser` once on
  x (B, ...) stacked twice (unconditional first), a plain denoise_fn twice.

  `guided`, a traced scalar bool (a step of a guidance interval, `guided_steps`), picks at
  run time between that guided output and the conditional model alone (w = 1, one call at
  batch B): only the branch taken runs. None guides.
  """
  if guidance_scale == 1.0:
    return denoise_fn(x, t, True)
  if guidance_scale == 0.0:
    return denoise_fn(x, t, False)
  if guided is not None:
    return jax.lax.cond(guided, lambda x: guided_output(denoise_fn, x, t, guidance_scale),
                        lambda x: denoise_fn(x, t, True), x)
  if isinstance(denoise_fn, BatchedDenoiser):
    b = x.shape[0]
    both = denoise_fn.masked(jnp.concatenate([x, x]), jnp.concatenate([t, t]),
                             jnp.arange(2 * b) >= b)
    uncond, cond = both[:b], both[b:]
  else:
    uncond = denoise_fn(x, t, False)
    cond = denoise_fn(x, t, True)
  return uncond + guidance_scale * (cond - uncond)


def noise_level(alpha_bar: jnp.ndarray) -> jnp.ndarray:
  """sigma = s / a = sqrt((1 - alpha_bar) / alpha_bar): the noise-to-signal ratio of x_t =
  a x0 + s eps, the noise level of Karras et al. 2022 (EDM) on the data's own scale."""
  return jnp.sqrt((1.0 - alpha_bar) / alpha_bar)


def check_guidance_interval(interval) -> tuple[float, ...]:
  """`interval` as () (guidance at every step) or (lo, hi) with 0 <= lo < hi, where hi may
  be inf (given as None too: JSON's form, `interval_json`); ValueError otherwise."""
  interval = tuple(float('inf') if v is None else float(v) for v in interval)
  if interval and not (len(interval) == 2 and 0.0 <= interval[0] < interval[1]):
    raise ValueError(f'guidance_interval must be () (every step) or (lo, hi) noise levels '
                     f'with 0 <= lo < hi (hi may be inf), got {interval}')
  return interval


def interval_json(interval) -> list:
  """A guidance interval as JSON can hold it: [] or [lo, hi], an infinite hi as None."""
  return [None if v == float('inf') else v for v in check_guidance_interval(interval)]


def interval_text(interval) -> str:
  """' at noise levels in (lo, hi]' for a guidance interval, '' for () (every step): the
  words tables put after a guidance scale."""
  interval = check_guidance_interval(interval or ())
  return f' at noise levels in ({interval[0]:g}, {interval[1]:g}]' if interval else ''


def guided_steps(sigmas: jnp.ndarray, interval: tuple[float, ...]) -> jnp.ndarray | None:
  """Which model evaluations get classifier-free guidance: (K,) bool, True where the noise
  level sigma (K,) lies in (lo, hi]; None for interval () (every step).

  Guidance in a limited interval (Kynkaenniemi et al. 2024, who guide the middle noise
  levels of image models): outside the interval a step calls the conditional model alone, at
  half the cost. On the synthetic benchmark it is the noisiest steps, where the onsets are
  placed, that need guidance (docs/generation.md).
  """
  interval = check_guidance_interval(interval)
  if not interval:
    return None
  lo, hi = interval
  return (sigmas > lo) & (sigmas <= hi)
