"""CAVP (Diff-Foley's baseline): single-scale contrast, then a UNet on frozen features
(Table 3, row 1).

Clip-level semantic contrast plus one temporal level (segment-vs-segment, negatives from other
clips and other times of the same clip), without adaptive weights: the MSA code at one scale
pair, not a second implementation. The denoiser trains afterwards on the frozen encoders.

  python -m gmscavp_jax.main --config=configs/cavp.py:runlocal --workdir=/tmp/cavp
"""

from configs import common


def get_config(arg=None):
  """Full-size CAVP; `arg='runlocal'` gives the CPU-sized variant."""
  c = common.base_config()
  c.experiment = 'cavp'
  c.model.scale_pools = (1, 40)
  c.model.scale_grids = (1, 1)
  c.loss.adaptive_weights = False
  # Frame level and clip level only: every UNet level attends to the frames (the clip
  # embedding already reaches every block through the timestep embedding).
  c.unet.level_scales = (0, 0, 0)
  c.diffusion.training = 'frozen'
  c.diffusion.encoder_steps = c.train.num_steps
  c.train.num_steps *= 2
  return common.apply_variant(c, arg)
