"""Full-size MSD UNet forward: XLA's attention against the chunked one, then a per-op profile.

  python docs/probes/unet_forward_profile.py [BATCH ...]   (default: 1 2)

The program is `tools/torch_sidebyside`'s forward of the MSD UNet with random params, at the
full-size config (configs/msa_msd.py: 10 s, 400 mel frames). For each batch size it compiles
the forward twice, with `attention.IMPLEMENTATION` 'xla' and 'auto' (chunked on a CPU), checks
the outputs are equal, times both interleaved (best and median of 3), and prints the
per-op Breakdown (`infra/profiling.profile`) of the new one against a peak measured in the
same process.
"""

import sys
import time

import jax
import numpy as np

from configs import msa_msd
from gmscavp_jax.core import steps
from gmscavp_jax.infra import perf
from gmscavp_jax.infra import profiling
from gmscavp_jax.models import attention
from gmscavp_jax.tools import sidebyside_lib as lib
from gmscavp_jax.tools import torch_sidebyside as sxs


def main(batch_sizes=(1, 2)):
  config = msa_msd.get_config()
  mel_frames = steps.num_mel_frames(config)
  params = jax.device_put(lib.randomised_params(config, 0, mel_frames))
  forward, _, _ = sxs.jax_functions(config)
  peak = perf.measure_matmul_flops(lib.MATMUL, repeats=8)
  print(f'peak {peak / 1e9:.1f} GFLOP/s (best of 8 warm {lib.MATMUL}^3 float32 matmuls)')
  for b in batch_sizes:
    batch = jax.device_put(lib.make_batch(config, b, 0, mel_frames))
    compiled = {}
    for impl in ('xla', 'auto'):
      attention.IMPLEMENTATION = impl  # Read at trace time; a new function is traced anew.
      compiled[impl] = jax.jit(lambda p, x: forward(p, x)).lower(params, batch).compile()
    outs = {impl: np.asarray(c(params, batch)) for impl, c in compiled.items()}
    times = {impl: [] for impl in compiled}
    for _ in range(3):
      for impl, c in compiled.items():
        start = time.perf_counter()
        jax.block_until_ready(c(params, batch))
        times[impl].append(time.perf_counter() - start)
    print(f'== forward, batch {b}: outputs equal {np.array_equal(outs["xla"], outs["auto"])}')
    for impl, t in times.items():
      print(f'  attention {impl}: best {min(t):.3f} s, median {np.median(t):.3f} s')
    new = compiled['auto']
    print(profiling.profile(lambda: new(params, batch), new.as_text(), 3, peak,
                            None).report(top=20))


if __name__ == '__main__':
  main(tuple(int(a) for a in sys.argv[1:]) or (1, 2))
