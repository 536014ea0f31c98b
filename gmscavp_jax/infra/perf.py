"""Performance accounting for the benchmark: FLOPs, peak FLOP/s, MFU and device memory.

The FLOPs of a step are what XLA's cost analysis counts in the compiled program, so they
include whatever the program executes (recomputation under jax.checkpoint too): with remat on,
the MFU printed is closer to a hardware FLOP utilisation than to a model FLOP utilisation.
For a program partitioned over a mesh the count is per device (each device runs its own
partition), so a step's total is `per-device flops x number of devices`.
"""

import math
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp

# Dense peak FLOP/s per device from the vendors' spec sheets, matched by substring of
# `device.device_kind`, first match wins (so 'H100 PCIe' before 'H100', 'TPU v5 lite' before
# 'TPU v5'). Columns:
#   bfloat16: bf16 (and fp16) matmuls.
#   float32: float32 matmuls at JAX's default precision, which trades precision for speed:
#     TF32 tensor cores on NVIDIA Ampere and later, one bf16 pass on TPU. We use these
#     rather than the true-f32 rates (H100 ~67e12, A100 19.5e12) because that is how this
#     code's float32 matmuls and convs run unless jax_default_matmul_precision is raised.
#   float32 highest: when jax_default_matmul_precision asks for full float32 (CUDA cores on
#     GPU; about six bf16 passes on TPU, so bf16 / 6 is an approximation).
# The H200 has the H100 SXM's compute (more, faster memory only). 'TPU v5 lite' is v5e,
# 'TPU v5' is v5p, 'TPU v6 lite' is v6e (Trillium).
PEAK_FLOPS = (
    # (device_kind substring, bfloat16, float32 default precision, float32 highest)
    ('H100 PCIe', 756e12, 378e12, 51e12),
    ('H100', 989e12, 494e12, 67e12),  # SXM ('NVIDIA H100 80GB HBM3').
    ('H200', 989e12, 494e12, 67e12),
    ('A100', 312e12, 156e12, 19.5e12),  # SXM4 and PCIe have the same rates.
    ('TPU v4', 275e12, 275e12, 275e12 / 6),
    ('TPU v5 lite', 197e12, 197e12, 197e12 / 6),
    ('TPU v5', 459e12, 459e12, 459e12 / 6),
    ('TPU v6 lite', 918e12, 918e12, 918e12 / 6),
    ('TPU v6e', 918e12, 918e12, 918e12 / 6),
)

# Values of jax_default_matmul_precision that ask for full float32 matmuls.
_HIGHEST = ('highest', 'float32', 'F32_F32_F32')


class Peak(NamedTuple):
  """Peak FLOP/s of all the devices together, and where the number comes from."""
  flops_per_sec: float
  source: str


def is_low_precision(compute_dtype: str) -> bool:
  """Whether `compute_dtype` ('float32', 'bfloat16', ...) runs on 16-bit matmul units."""
  return jnp.dtype(compute_dtype).itemsize == 2


def spec_peak_flops(device_kind: str, compute_dtype: str = 'float32',
                    matmul_precision: str | None = None) -> float | None:
  """Spec-sheet dense peak FLOP/s of one device of `device_kind`, or None if not in the table.

  Args:
    device_kind: `jax.Device.device_kind`, e.g. 'NVIDIA H100 80GB HBM3' or 'TPU v5 lite'.
    compute_dtype: the dtype the matmuls run in: 16-bit types use the bf16 column.
    matmul_precision: jax_default_matmul_precision (None: JAX's default, fast float32).
  """
  for key, bf16, f32, f32_highest in PEAK_FLOPS:
    if key.lower() in device_kind.lower():
      if is_low_precision(compute_dtype):
        return bf16
      return f32_highest if matmul_precision in _HIGHEST else f32
  return None


def measure_matmul_flops(size: int = 2048, dtype: str = 'float32', repeats: int = 5,
                         device: jax.Device | None = None) -> float:
  """Best FLOP/s of a jitted (size x size) @ (size x size) matmul over `repeats` timed calls.

  A stand-in for the peak where no spec-sheet number applies (CPU, unknown accelerators):
  what this process can get from its device(s) on the operation they do best. On a busy
  host the number is as noisy as the step time it is compared with.
  """
  device = device or jax.devices()[0]
  a, b = jax.random.normal(jax.random.key(0), (2, size, size), dtype)
  a, b = jax.device_put(a, device), jax.device_put(b, device)
  matmul = jax.jit(jnp.matmul)
  jax.block_until_ready(matmul(a, b))  # Compile and warm up.
  best = math.inf
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(matmul(a, b))
    best = min(best, time.perf_counter() - t0)
  return 2 * size**3 / best


def peak_flops(compute_dtype: str = 'float32', devices: list | None = None, *,
               matmul_size: int | None = None) -> Peak:
  """Peak FLOP/s of `devices` (default all) together for matmuls in `compute_dtype`.

  Known accelerators: the spec sheet's per-device peak times the number of devices.
  Otherwise a matmul of `matmul_size` (default 2048 on CPU, 8192 on an accelerator, which a
  smaller one would not fill) in `compute_dtype` is timed on the first device: on CPU that is
  the host's peak (the CPU devices of one process share its cores, so it is not multiplied);
  on an unknown accelerator it is multiplied by the number of devices.
  """
  devices = list(devices or jax.devices())
  kind, n = devices[0].device_kind, len(devices)
  cpu = devices[0].platform == 'cpu'
  per_device = spec_peak_flops(kind, compute_dtype, jax.config.jax_default_matmul_precision)
  if per_device is not None:
    return Peak(per_device * n, f'spec sheet: {n} x {kind} at {per_device / 1e12:.0f} '
                f'TFLOP/s ({compute_dtype})')
  matmul_size = matmul_size or (2048 if cpu else 8192)
  measured = measure_matmul_flops(matmul_size, compute_dtype, device=devices[0])
  what = f'measured: best {matmul_size}^3 {compute_dtype} matmul'
  if cpu:
    return Peak(measured, f'{what} on the host ({kind})')
  return Peak(measured * n, f'{what}, {n} x {kind} at {measured / 1e12:.1f} TFLOP/s')


def compiled_flops(compiled) -> float | None:
  """FLOPs of one call of a compiled jax program, per device, from XLA's cost analysis.

  `compiled` is a `jax.stages.Compiled` (or `Lowered`). Its `cost_analysis()` is a dict in
  this jax and a list of dicts (one per HLO module, summed here) in older ones; None when
  the backend does not report FLOPs. Loops (`lax.scan`, `while`) count their body once.
  """
  analysis = compiled.cost_analysis()
  if analysis is None:
    return None
  if isinstance(analysis, dict):
    analysis = [analysis]
  flops = [a['flops'] for a in analysis if a and 'flops' in a]
  return float(sum(flops)) if flops else None


def utilisation(flops_per_step: float | None, step_s: float, peak: float) -> dict:
  """{'flops_per_sec', 'mfu'} of a step of `flops_per_step` FLOPs (all devices) taking
  `step_s` seconds against a peak of `peak` FLOP/s (all devices); None where unknown."""
  if flops_per_step is None:
    return {'flops_per_sec': None, 'mfu': None}
  achieved = flops_per_step / step_s
  return {'flops_per_sec': achieved, 'mfu': achieved / peak}


def compiled_memory_bytes(compiled) -> int | None:
  """XLA's estimate of the device memory one call of `compiled` holds, per device.

  Arguments + outputs + temporaries, less the outputs aliased to donated arguments (counted
  once). A static estimate from buffer assignment, not a measurement; None if unavailable.
  """
  stats = compiled.memory_analysis()
  if stats is None:
    return None
  return (stats.argument_size_in_bytes + stats.output_size_in_bytes
          - stats.alias_size_in_bytes + stats.temp_size_in_bytes)


def device_peak_bytes(device: jax.Device | None = None) -> int | None:
  """The allocator's peak bytes in use on `device` since the process started (GPU, TPU).

  None where the backend keeps no statistics (CPU: `memory_stats()` is None).
  """
  stats = (device or jax.devices()[0]).memory_stats()
  return stats.get('peak_bytes_in_use') if stats else None


def peak_memory(compiled, device: jax.Device | None = None) -> dict:
  """{'bytes', 'source', 'estimate_bytes'}: the measured peak where the device reports one
  (source 'device'), else XLA's estimate for `compiled` (source 'XLA estimate')."""
  estimate = compiled_memory_bytes(compiled)
  measured = device_peak_bytes(device)
  if measured is not None:
    return {'bytes': measured, 'source': 'device', 'estimate_bytes': estimate}
  return {'bytes': estimate, 'source': 'XLA estimate', 'estimate_bytes': estimate}
