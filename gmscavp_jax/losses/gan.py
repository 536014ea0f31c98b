"""The GAN vocoder's adversarial losses (HiFi-GAN: least squares plus feature matching).

Each takes the discriminator's outputs as a list of (logits, features) pairs, one pair per
sub-discriminator (models/vocoder_gan.Discriminator), and returns a scalar.
"""

import jax
import jax.numpy as jnp


def discriminator_loss(real: list, fake: list) -> jax.Array:
  """Least-squares GAN loss of the discriminator: sum over its parts of
  mean((1 - D(real))^2) + mean(D(fake)^2)."""
  return sum(jnp.mean(jnp.square(1.0 - r)) + jnp.mean(jnp.square(f))
             for (r, _), (f, _) in zip(real, fake))


def generator_adversarial_loss(fake: list) -> jax.Array:
  """Least-squares GAN loss of the generator: sum over the parts of mean((1 - D(fake))^2)."""
  return sum(jnp.mean(jnp.square(1.0 - f)) for f, _ in fake)


def feature_matching_loss(real: list, fake: list) -> jax.Array:
  """Sum over parts and layers of mean |features(real) - features(fake)| (real held fixed)."""
  return sum(jnp.mean(jnp.abs(jax.lax.stop_gradient(r) - f))
             for (_, rs), (_, fs) in zip(real, fake) for r, f in zip(rs, fs))
