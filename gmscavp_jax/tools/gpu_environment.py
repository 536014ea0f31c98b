"""What the GPU benchmark suite ran on (tools/gpu_suite.py): the device, the versions and the
commit, and which attention implementation the UNet's blocks take, with cuDNN's checked
against XLA's before it is trusted (docs/speed.md, "GPU benchmark suite")."""

import platform

import jax
import jax.numpy as jnp
import jaxlib
import ml_collections

from gmscavp_jax.infra import provenance
from gmscavp_jax.models import attention


def short_error(error: BaseException) -> str:
  """`error` as one line of at most 300 characters, its type first."""
  return f"{type(error).__name__}: {' '.join(str(error).split())[:300]}"


def _commit() -> dict:
  """{'commit': HEAD's hash, 'dirty': uncommitted changes} of the package's checkout
  (provenance.code_commit), or Nones outside a git checkout."""
  code = provenance.code_commit()
  if code == 'unknown':
    return {'commit': None, 'dirty': None}
  return {'commit': code.removesuffix('+dirty'), 'dirty': code.endswith('+dirty')}


def environment(mesh) -> dict:
  """The report's 'device' and version fields for the devices of `mesh`."""
  device = mesh.devices.flat[0]
  stats = device.memory_stats() or {}
  return {
      'device': {'platform': device.platform, 'kind': device.device_kind,
                 'count': int(mesh.size), 'memory_limit_bytes': stats.get('bytes_limit')},
      'jax_version': jax.__version__, 'jaxlib_version': jaxlib.__version__,
      'python_version': platform.python_version(), **_commit(),
  }


def _cudnn_check(num_heads: int, head_dim: int, dtype: str) -> dict:
  """{'max_abs_diff'} of cuDNN's attention and its gradient against XLA's on random (2, 256,
  num_heads, head_dim) inputs, or {'error'} where cuDNN refuses them."""
  q, k, v = jax.random.normal(jax.random.key(0), (3, 2, 256, num_heads, head_dim), dtype)

  def value_and_grad(fn):
    return jax.jit(jax.value_and_grad(lambda q: fn(q, k, v).astype('float32').sum()))(q)

  try:
    cudnn = value_and_grad(attention.attend)
    xla = value_and_grad(jax.nn.dot_product_attention)
  except Exception as e:  # pylint: disable=broad-except
    return {'error': short_error(e)}
  diff = max(float(abs(jnp.asarray(a, 'float32') - jnp.asarray(b, 'float32')).max())
             for a, b in zip(jax.tree.leaves(cudnn), jax.tree.leaves(xla)))
  return {'max_abs_diff': diff}


def attention_report(config: ml_collections.ConfigDict) -> dict:
  """Which attention implementation the MSD UNet's blocks take here, per head dim.

  Where that is cuDNN, it is first checked against XLA's (outputs and gradients); if cuDNN
  fails, attention.IMPLEMENTATION is set to 'xla' for the rest of the process ('fallback').
  """
  u = config.unet
  levels = sorted(set(u.attention_levels) | {len(u.widths) - 1})  # The middle is the last.
  dtype = config.train.compute_dtype
  setting, choice, check, fallback = attention.IMPLEMENTATION, {}, {}, None
  for level in levels:
    head_dim = u.widths[level] // u.num_heads
    q = jax.ShapeDtypeStruct((1, 16, u.num_heads, head_dim), dtype)
    choice[str(head_dim)] = attention.implementation(q, q, q)
    if choice[str(head_dim)] == 'cudnn':
      check[str(head_dim)] = _cudnn_check(u.num_heads, head_dim, dtype)
  if any('error' in c for c in check.values()):
    attention.IMPLEMENTATION = fallback = 'xla'
    choice = {head_dim: 'xla' for head_dim in choice}
  return {'setting': setting, 'backend': jax.default_backend(),
          'by_head_dim': choice, 'cudnn_check': check, 'fallback': fallback}
