"""Tests of the benchmark's accounting (gmscavp_jax/infra/perf.py): FLOPs, peaks, MFU, memory."""

import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from gmscavp_jax.infra import perf
from tests.conftest import ROOT
from tests.conftest import xla_flags

M, K, N = 64, 32, 16


def _compiled_matmul(**jit_kwargs):
  fn = jax.jit(jnp.matmul, **jit_kwargs)
  return fn.lower(jnp.ones((M, K)), jnp.ones((K, N))).compile()


def test_compiled_flops_of_a_matmul_is_2mnk():
  assert perf.compiled_flops(_compiled_matmul()) == 2 * M * N * K


class _FakeCompiled:

  def __init__(self, analysis):
    self._analysis = analysis

  def cost_analysis(self):
    return self._analysis


@pytest.mark.parametrize('analysis, flops', [
    ({'flops': 10.0, 'bytes accessed': 4.0}, 10.0),
    ([{'flops': 10.0}], 10.0),  # Older jax: one dict per HLO module.
    ([{'flops': 10.0}, {'flops': 5.0}], 15.0),
    ([{'bytes accessed': 4.0}], None),
    (None, None),
])
def test_compiled_flops_reads_a_dict_or_a_list(analysis, flops):
  assert perf.compiled_flops(_FakeCompiled(analysis)) == flops


def test_flops_are_counted_per_device_on_a_mesh():
  # The benchmark multiplies by the mesh size: check that XLA counts one partition's FLOPs.
  code = ('import jax, jax.numpy as jnp, numpy as np\n'
          'from jax.sharding import Mesh, NamedSharding, PartitionSpec as P\n'
          'from gmscavp_jax.infra import perf\n'
          "mesh = Mesh(np.asarray(jax.devices()), ('data',))\n"
          "fn = jax.jit(jnp.matmul, in_shardings=(NamedSharding(mesh, P('data')), "
          'NamedSharding(mesh, P())))\n'
          f'print(perf.compiled_flops(fn.lower(jnp.ones(({M}, {K})), '
          f'jnp.ones(({K}, {N}))).compile()))\n')
  env = dict(os.environ, XLA_FLAGS=xla_flags('--xla_force_host_platform_device_count=4'),
             JAX_PLATFORMS='cpu')
  out = subprocess.run([sys.executable, '-c', code], cwd=ROOT, env=env, check=True,
                       capture_output=True, text=True, timeout=60).stdout
  assert float(out.strip().splitlines()[-1]) == 2 * M * N * K / 4


def test_measured_matmul_flops_are_positive_and_finite():
  flops = perf.measure_matmul_flops(size=32, repeats=2)
  assert flops > 0 and math.isfinite(flops)


def test_cpu_peak_is_measured_and_not_multiplied_by_devices():
  peak = perf.peak_flops('float32', jax.devices()[:1], matmul_size=32)
  assert peak.flops_per_sec > 0 and math.isfinite(peak.flops_per_sec)
  assert peak.source.startswith('measured')


@pytest.mark.parametrize('kind, dtype, precision, expected', [
    ('NVIDIA H100 80GB HBM3', 'bfloat16', None, 989e12),
    ('NVIDIA H100 80GB HBM3', 'float32', None, 494e12),  # TF32 at JAX's default precision.
    ('NVIDIA H100 80GB HBM3', 'float32', 'highest', 67e12),
    ('NVIDIA H100 PCIe', 'bfloat16', None, 756e12),
    ('NVIDIA H200', 'bfloat16', None, 989e12),
    ('NVIDIA A100-SXM4-80GB', 'bfloat16', None, 312e12),
    ('TPU v4', 'float32', None, 275e12),
    ('TPU v5 lite', 'bfloat16', None, 197e12),  # v5e, not v5p.
    ('TPU v5', 'bfloat16', None, 459e12),
    ('TPU v6 lite', 'bfloat16', None, 918e12),
    ('cpu', 'float32', None, None),
    ('Some Future Chip', 'bfloat16', None, None),
])
def test_spec_peak_flops_table(kind, dtype, precision, expected):
  assert perf.spec_peak_flops(kind, dtype, precision) == expected


def test_utilisation_arithmetic():
  use = perf.utilisation(flops_per_step=3e12, step_s=0.5, peak=12e12)
  assert use['flops_per_sec'] == pytest.approx(6e12)
  assert use['mfu'] == pytest.approx(0.5)
  assert perf.utilisation(None, 0.5, 12e12) == {'flops_per_sec': None, 'mfu': None}


def test_memory_estimate_counts_arguments_outputs_and_donations_once():
  plain = perf.compiled_memory_bytes(_compiled_matmul())
  assert plain >= 4 * (M * K + K * N + M * N)
  # An output that reuses a donated argument's buffer is not counted twice.
  add = jax.jit(lambda a: a + 1, donate_argnums=(0,)).lower(jnp.ones((M, K))).compile()
  assert perf.compiled_memory_bytes(add) == 4 * M * K


def test_peak_memory_on_cpu_falls_back_to_the_estimate():
  compiled = _compiled_matmul()
  if jax.devices()[0].memory_stats() is not None:
    pytest.skip('this backend reports its allocator peak')
  mem = perf.peak_memory(compiled)
  assert mem['source'] == 'XLA estimate'
  assert mem['bytes'] == perf.compiled_memory_bytes(compiled) > 0
