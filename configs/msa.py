"""MSA: multi-scale contrastive alignment, then a UNet on its frozen features (Table 3, row 2).

  python -m gmscavp_jax.main --config=configs/msa.py:runlocal --workdir=/tmp/msa
"""

from configs import common


def get_config(arg=None):
  """Full-size MSA; `arg='runlocal'` gives the CPU-sized variant."""
  c = common.base_config()
  c.experiment = 'msa'
  # Every temporal scale from single frames to the whole clip (eq. 2), all weighted 1 (eq. 4).
  c.model.scale_pools = (1, 2, 4, 8, 40)
  c.model.scale_grids = (1, 1, 1, 1, 1)
  c.loss.adaptive_weights = True
  # Two stages: encoders first, then the denoiser on their frozen features.
  c.diffusion.training = 'frozen'
  c.diffusion.encoder_steps = c.train.num_steps
  c.train.num_steps *= 2
  return common.apply_variant(c, arg)
