"""GMS-CAVP: multi-scale alignment and multi-scale diffusion trained jointly (Table 3, row 4).

L = lambda_MSA L_MSA + lambda_MSD L_MSD (loss.msa_weight, loss.msd_weight); the denoiser's
gradients reach the encoders (diffusion.stop_gradient=True keeps them out).

  python -m gmscavp_jax.main --config=configs/msa_msd.py:runlocal --workdir=/tmp/msa_msd
"""

from configs import common


def get_config(arg=None):
  """Full-size GMS-CAVP; `arg='runlocal'` gives the CPU-sized variant."""
  c = common.base_config()
  c.experiment = 'msa_msd'
  c.model.scale_pools = (1, 2, 4, 8, 40)
  c.model.scale_grids = (1, 1, 1, 1, 1)
  c.loss.adaptive_weights = True
  c.diffusion.training = 'joint'
  return common.apply_variant(c, arg)
