"""The MSD denoising objective (eq. 7) with one denoiser call per loss.

Eq. 7 is L = E_{t~U{0..N-1}} ||target - f(x_t, t)||^2 + lambda_T E ||target - f(x_{N-1}, N-1)||^2
with target eps or v. Evaluating both terms would run the UNet twice; instead every example
draws its own t from the mixture

  t ~ U{0..N-1} with prob 1/(1+lambda_T),   t = N-1 with prob lambda_T/(1+lambda_T),

and the loss is (1+lambda_T) times the mean per-example error. Writing e(t) for the expected
error at step t, E[(1+lambda_T) e(t)] = (1+lambda_T) [E_U e / (1+lambda_T)
+ lambda_T e(N-1) / (1+lambda_T)] = E_U e + lambda_T e(N-1): eq. 7 exactly, in expectation.
"""

from typing import Callable

import chex
import jax
import jax.numpy as jnp

from gmscavp_jax.diffusion import schedules

DenoiseFn = Callable[[jnp.ndarray, jnp.ndarray], jnp.ndarray]


def _safe_mean(values: jnp.ndarray, weights: jnp.ndarray) -> jnp.ndarray:
  """sum(w v) / sum(w), and 0 where the weights sum to 0 (an empty mask)."""
  total = jnp.sum(weights)
  return jnp.where(total > 0, jnp.sum(weights * values) / jnp.where(total > 0, total, 1.0), 0.0)


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
                   example_weights: jnp.ndarray | None = None,
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
    example_weights: optional (B,) non-negative weights on the per-example errors. The loss is
      their weighted mean (normalised by their sum), so 0/1 weights mask examples out without
      changing the loss scale; all-zero weights give a loss of 0.

  Returns:
    (scalar loss, metrics): 'msd_loss' (the loss), 'msd_mse' (weighted mean per-example
    error, without the (1+lambda_T) factor) and 'msd_mse_terminal' (the same over examples
    that drew t = N-1; 0 if none did).
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

  pred = denoise_fn(x_t, t)
  chex.assert_equal_shape([pred, x0])
  err = jnp.square(target - pred.astype(jnp.float32))
  per_example = err.reshape(batch, -1).mean(axis=1)

  weights = (jnp.ones((batch,), jnp.float32) if example_weights is None
             else jnp.asarray(example_weights, jnp.float32))
  chex.assert_shape(weights, (batch,))
  mse = _safe_mean(per_example, weights)
  loss = (1.0 + terminal_weight) * mse
  is_terminal = (t == num_steps - 1).astype(jnp.float32)
  metrics = {
      'msd_loss': loss,
      'msd_mse': mse,
      'msd_mse_terminal': _safe_mean(per_example, weights * is_terminal),
  }
  return loss, metrics
