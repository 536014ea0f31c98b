"""MSD: single-scale contrast with the diffusion generator trained jointly (Table 3, row 3).

The CAVP scales (clip level + one temporal level), but the UNet trains from step 0 and its
gradients reach the encoders: generative pretraining without multi-scale alignment.

  python -m gmscavp_jax.main --config=configs/msd.py:runlocal --workdir=/tmp/msd
"""

from configs import common


def get_config(arg=None):
  """Full-size MSD; `arg='runlocal'` gives the CPU-sized variant."""
  c = common.base_config()
  c.experiment = 'msd'
  c.model.scale_pools = (1, 40)
  c.model.scale_grids = (1, 1)
  c.loss.adaptive_weights = False
  # Frame level and clip level only: every UNet level attends to the frames (the clip
  # embedding already reaches every block through the timestep embedding).
  c.unet.level_scales = (0, 0, 0)
  c.diffusion.training = 'joint'
  return common.apply_variant(c, arg)
