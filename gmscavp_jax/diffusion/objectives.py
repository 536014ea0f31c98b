"""The MSD denoising objective (eq. 7) with one denoiser call per loss.

Eq. 7 is L = E_{t~U{0..N-1}} ||target - f(x_t, t)||^2 + lambda_T E ||target - f(x_{N-1}, N-1)||^2
with target eps or v. Evaluating both terms would run the UNet twice; instead every example
draws its own t from the mixture

  t ~ U{0..N-1} with prob 1/(1+lambda_T),   t = N-1 with prob lambda_T/(1+lambda_T),

and the loss is (1+lambda_T) times the mean per-example error. Writing e(t) for the expected
error at step t, E[(1+lambda_T) e(t)] = (1+lambda_T) [E_U e / (1+lambda_T)
+ lambda_T e(N-1) / (1+lambda_T)] = E_U e + lambda_T e(N-1): eq. 7 exactly, in expectation.

Contrastive diffusion (CMMD, papers/002 eq. 4) adds a second denoiser call on the same x_t, t
and noise with a misaligned condition, so the two errors differ by the condition alone. CMMD's
L_diff(pos) - eta L_diff(neg) is unbounded below: the denoiser could lower it without limit by
making its error on negatives explode. Here the negative enters through a ranking term per
example, tau * softplus((log e_pos - log e_neg) / tau): >= 0, with the gradient
sigmoid(.) (grad log e_pos - grad log e_neg), i.e. CMMD's linear form on log errors (with
weight 1/2) while the two errors are close, fading once the negative's error exceeds the
positive's by a factor of about exp(3 tau). Log errors make tau a relative margin, so one tau
serves every timestep, although the error's scale changes by orders of magnitude over t.

`flow_loss` is the rectified-flow alternative (diffusion.objective 'flow', as in SD3 and
MMAudio): x_t = (1 - t) x0 + t eps for t in [0, 1], and the denoiser regresses the velocity
eps - x0, with t drawn from a logit-normal(0, 1) (mass in the middle, where the velocity is
hardest to predict) or uniformly. The contrastive term applies to it unchanged: it only
compares two errors on the same x_t, t and noise.
"""

from typing import Callable, NamedTuple

import chex
import jax
import jax.numpy as jnp

from gmscavp_jax.diffusion import schedules

DenoiseFn = Callable[[jnp.ndarray, jnp.ndarray], jnp.ndarray]
FLOW_T_SAMPLINGS = ('logit_normal', 'uniform')


class Contrast(NamedTuple):
  """The contrastive term of `diffusion_loss`: the same denoiser given negative conditions.

  denoise_fn: (x_t, t) -> output like the positive denoiser's, under a misaligned condition.
  weight: eta, the term's weight in the returned loss.
  temperature: tau > 0 of the ranking term (module docstring), a relative error margin.
  mask: optional (B,) 0/1, the examples the term covers (e.g. those whose condition was not
    dropped for classifier-free guidance: with both conditions null, there is nothing to rank),
    on top of `diffusion_loss`'s example_weights.
  """
  denoise_fn: DenoiseFn
  weight: float
  temperature: float
  mask: jnp.ndarray | None = None


# Floor of the per-example errors inside the log: an exact prediction stays finite.
_LOG_ERROR_FLOOR = 1e-8


def contrastive_term(err_pos: jnp.ndarray, err_neg: jnp.ndarray, temperature: float,
                     mask: jnp.ndarray | None = None) -> tuple[jnp.ndarray, dict]:
  """Masked mean of tau * softplus((log e_pos - log e_neg) / tau) over (B,) errors.

  `mask` (B,) holds non-negative weights (0/1 to mask); None weighs every example equally.

  Returns (term, metrics): 'cdiff' (the term), 'cdiff_acc' (share of examples whose positive
  error is below the negative's), 'msd_mse_pos' and 'msd_mse_neg' (mean errors), all over the
  masked-in examples (0 when the mask is empty).
  """
  if temperature <= 0:
    raise ValueError(f'contrastive temperature must be > 0, got {temperature}')
  chex.assert_equal_shape([err_pos, err_neg])
  weights = (jnp.ones_like(err_pos) if mask is None
             else jnp.asarray(mask, jnp.float32).reshape(err_pos.shape))
  gap = jnp.log(err_pos + _LOG_ERROR_FLOOR) - jnp.log(err_neg + _LOG_ERROR_FLOOR)
  ranking = temperature * jax.nn.softplus(gap / temperature)
  term = _safe_mean(ranking, weights)
  return term, {
      'cdiff': term,
      'cdiff_acc': _safe_mean((err_pos < err_neg).astype(jnp.float32), weights),
      'msd_mse_pos': _safe_mean(err_pos, weights),
      'msd_mse_neg': _safe_mean(err_neg, weights),
  }


def _safe_mean(values: jnp.ndarray, weights: jnp.ndarray) -> jnp.ndarray:
  """sum(w v) / sum(w), and 0 where the weights sum to 0 (an empty mask)."""
  total = jnp.sum(weights)
  return jnp.where(total > 0, jnp.sum(weights * values) / jnp.where(total > 0, total, 1.0), 0.0)


def _regression(denoise_fn: DenoiseFn, x_t: jnp.ndarray, t: jnp.ndarray, target: jnp.ndarray,
                example_weights: jnp.ndarray | None, contrast: Contrast | None):
  """The part both objectives share: per-example squared error (B,) of denoise_fn(x_t, t)
  against `target`, the (B,) example weights, and a function that adds the contrastive term
  (loss, metrics) -> (loss, metrics) (the identity without `contrast`)."""
  batch = target.shape[0]

  def per_example_error(fn):
    pred = fn(x_t, t)
    chex.assert_equal_shape([pred, target])
    return jnp.square(target - pred.astype(jnp.float32)).reshape(batch, -1).mean(axis=1)

  per_example = per_example_error(denoise_fn)
  weights = (jnp.ones((batch,), jnp.float32) if example_weights is None
             else jnp.asarray(example_weights, jnp.float32))
  chex.assert_shape(weights, (batch,))

  def add_contrast(loss, metrics):
    if contrast is None:
      return loss, metrics
    mask = weights if contrast.mask is None else weights * contrast.mask
    term, contrast_metrics = contrastive_term(
        per_example, per_example_error(contrast.denoise_fn), contrast.temperature, mask)
    return loss + contrast.weight * term, {**metrics, **contrast_metrics}

  return per_example, weights, add_contrast


def min_snr_weight(a: jnp.ndarray, s: jnp.ndarray, gamma: float,
                   prediction: str) -> jnp.ndarray:
  """(B,) Min-SNR-gamma weights of the eps or v error at signal and noise scales a, s (B,)."""
  snr = jnp.square(a) / jnp.maximum(jnp.square(s), 1e-12)
  clipped = jnp.minimum(snr, gamma)
  return clipped / (snr if prediction == 'eps' else snr + 1.0)


def sample_timesteps(rng: jax.Array, batch: int, num_steps: int,
                     terminal_weight: float = 0.0) -> jnp.ndarray:
  """(B,) int32 timesteps from the mixture above: U{0..N-1}, and N-1 w.p. lambda_T/(1+lambda_T)."""
  uniform_rng, terminal_rng = jax.random.split(rng)
  t = jax.random.randint(uniform_rng, (batch,), 0, num_steps, dtype=jnp.int32)
  if terminal_weight > 0:
    terminal = jax.random.bernoulli(terminal_rng, terminal_weight / (1.0 + terminal_weight),
                                    (batch,))
    t = jnp.where(terminal, num_steps - 1, t)
  return t


def diffusion_loss(denoise_fn: DenoiseFn, x0: jnp.ndarray, rng: jax.Array,
                   alpha_bar: jnp.ndarray, *, prediction: str = 'eps',
                   terminal_weight: float = 0.0,
                   min_snr_gamma: float = 0.0,
                   example_weights: jnp.ndarray | None = None,
                   contrast: Contrast | None = None,
                   ) -> tuple[jnp.ndarray, dict[str, jnp.ndarray]]:
  """Eq. 7 estimated with a single `denoise_fn` call (see the module docstring).

  Args:
    denoise_fn: (x_t (B, ...), t (B,) int32) -> model output (B, ...) under `prediction`;
      any conditioning is closed over by the caller.
    x0: (B, ...) clean data.
    rng: key for t, the terminal draw and eps.
    alpha_bar: (N,) schedule (see schedules.alpha_bar).
    prediction: 'eps' or 'v' (static): what the model predicts and the loss regresses.
    terminal_weight: lambda_T >= 0 (static Python float) of eq. 7.
    min_snr_gamma: gamma > 0 weighs each example's error by Min-SNR-gamma (Hang et al. 2023):
      min(SNR_t, gamma) / SNR_t for eps, min(SNR_t, gamma) / (SNR_t + 1) for v, i.e.
      min(SNR_t, gamma) on the x0 error, so the many easy low-noise steps stop dominating
      the gradient; 0 (static) keeps eq. 7's uniform weighting.
    example_weights: optional (B,) non-negative weights on the per-example errors. The loss is
      their weighted mean (normalised by their sum), so 0/1 weights mask examples out without
      changing the loss scale; all-zero weights give a loss of 0.
    contrast: optional contrastive term (module docstring); None leaves the program as eq. 7
      alone (one denoiser call).

  Returns:
    (scalar loss, metrics): 'msd_loss' (eq. 7), 'msd_mse' (weighted mean per-example
    error, without the (1+lambda_T) factor) and 'msd_mse_terminal' (the same over examples
    that drew t = N-1; 0 if none did). With `contrast`, the loss is msd_loss + weight * cdiff
    and the metrics add `contrastive_term`'s.
  """
  schedules.check_prediction(prediction)
  if terminal_weight < 0:
    raise ValueError(f'diffusion terminal_weight must be >= 0, got {terminal_weight}')
  num_steps = alpha_bar.shape[0]
  batch = x0.shape[0]
  x0 = x0.astype(jnp.float32)
  t_rng, eps_rng = jax.random.split(rng)
  t = sample_timesteps(t_rng, batch, num_steps, terminal_weight)
  eps = jax.random.normal(eps_rng, x0.shape, jnp.float32)
  a, s = (schedules.expand_to(c, x0) for c in schedules.signal_noise(alpha_bar, t))
  x_t = schedules.q_sample(x0, eps, a, s)
  target = eps if prediction == 'eps' else schedules.v_from_x0_eps(x0, eps, a, s)

  per_example, weights, add_contrast = _regression(denoise_fn, x_t, t, target,
                                                   example_weights, contrast)
  mse = _safe_mean(per_example, weights)
  weighted = mse
  if min_snr_gamma > 0:
    snr_weights = min_snr_weight(a.reshape(-1), s.reshape(-1), min_snr_gamma, prediction)
    weighted = _safe_mean(per_example * snr_weights, weights)
  loss = (1.0 + terminal_weight) * weighted
  is_terminal = (t == num_steps - 1).astype(jnp.float32)
  metrics = {
      'msd_loss': loss,
      'msd_mse': mse,
      'msd_mse_terminal': _safe_mean(per_example, weights * is_terminal),
  }
  return add_contrast(loss, metrics)


def sample_flow_times(rng: jax.Array, batch: int, t_sampling: str) -> jnp.ndarray:
  """(B,) float32 flow times in [0, 1]: sigmoid(N(0, 1)) ('logit_normal') or U[0, 1)."""
  if t_sampling == 'logit_normal':
    return jax.nn.sigmoid(jax.random.normal(rng, (batch,), jnp.float32))
  if t_sampling == 'uniform':
    return jax.random.uniform(rng, (batch,), jnp.float32)
  raise ValueError(f'flow t_sampling must be one of {FLOW_T_SAMPLINGS}, got {t_sampling!r}')


def flow_loss(denoise_fn: DenoiseFn, x0: jnp.ndarray, rng: jax.Array, *, num_timesteps: int,
              t_sampling: str = 'logit_normal',
              example_weights: jnp.ndarray | None = None,
              contrast: Contrast | None = None,
              ) -> tuple[jnp.ndarray, dict[str, jnp.ndarray]]:
  """The rectified-flow velocity loss E ||(eps - x0) - f(x_t, t (N-1))||^2 (module docstring).

  Args:
    denoise_fn: (x_t (B, ...), model time (B,) float32) -> velocity (B, ...); the model time
      is schedules.flow_model_time(t, num_timesteps), in the diffusion steps' range.
    x0: (B, ...) clean data.
    rng: key for t and eps.
    num_timesteps: N (diffusion.num_timesteps), which sets the model time's scale.
    t_sampling: 'logit_normal' or 'uniform' (static): the distribution of t.
    example_weights: optional (B,) non-negative weights, as in `diffusion_loss`.
    contrast: optional contrastive term, as in `diffusion_loss`.

  Returns:
    (scalar loss, metrics): 'msd_loss' (the loss without the contrastive term) and 'msd_mse'
    (the weighted mean per-example error; equal to msd_loss, as there is no terminal term),
    plus `contrastive_term`'s metrics with `contrast`.
  """
  batch = x0.shape[0]
  x0 = x0.astype(jnp.float32)
  t_rng, eps_rng = jax.random.split(rng)
  t = sample_flow_times(t_rng, batch, t_sampling)
  eps = jax.random.normal(eps_rng, x0.shape, jnp.float32)
  t_x = schedules.expand_to(t, x0)
  x_t = (1.0 - t_x) * x0 + t_x * eps
  target = eps - x0
  model_t = schedules.flow_model_time(t, num_timesteps)

  per_example, weights, add_contrast = _regression(denoise_fn, x_t, model_t, target,
                                                   example_weights, contrast)
  loss = _safe_mean(per_example, weights)
  return add_contrast(loss, {'msd_loss': loss, 'msd_mse': loss})
