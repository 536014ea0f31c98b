"""Twice the steps against the :runlocal default of b2427be, 3 seeds of msa_msd:runlocal,
evaluated as the ablation runner does (`evaluate --guidance=2.0`): mean ± std, the 95% Welch
interval of the difference (bold when it excludes 0) and the paired difference per seed (same
seed: same data order and init). The default's runs are Table 3's msa_msd at 1200 steps
(../table3_b2427be/); msa_msd-runlocal-seedS here trained with --config.train.num_steps=2400
(one cosine schedule over 2400 steps; code of 851b8fe, the same program as b2427be's default),
one run at a time on otherwise idle cores. Then msa's contrastive stage alone at 2400 steps
(msa_contrastive_seedS, code of 578113a, where 2400 is the default), against the same stage at
1200 (../video_conv_wide_53a350f/msa_contrastive_seedS), retrieval only:

  python -m gmscavp_jax.tools.ablation --root=R --seeds=3 --configs=msa_msd --guidance=2 \
      --override=train.num_steps=2400
  python -m gmscavp_jax.main --config=configs/msa.py:runlocal --workdir=W --config.seed=S \
      --config.diffusion.training=none --config.train.num_steps=2400
  python docs/ablation_runs/steps_2400_851b8fe/compare.py   # from the repository root
"""
import os
import sys

sys.path.insert(0, os.getcwd())
from gmscavp_jax.tools import runs  # pylint: disable=wrong-import-position

HERE = os.path.dirname(os.path.abspath(__file__))
BASE = os.path.join(os.path.dirname(HERE), 'table3_b2427be', 'msa_msd-runlocal-seed{}')
NEW = os.path.join(HERE, 'msa_msd-runlocal-seed{}')
MSA_BASE = os.path.join(os.path.dirname(HERE), 'video_conv_wide_53a350f',
                        'msa_contrastive_seed{}')
MSA_NEW = os.path.join(HERE, 'msa_contrastive_seed{}')
RETRIEVAL = [key for key in runs.COMPARED_KEYS if key[0].startswith('retrieval/')]


def main():
  print('\n'.join(runs.comparison_table(runs.seed_values(NEW), runs.seed_values(BASE),
                                        runs.COMPARED_KEYS, '1200 steps (b2427be)',
                                        '2400 steps')))
  print('\n'.join(runs.comparison_table(runs.seed_values(MSA_NEW, RETRIEVAL),
                                        runs.seed_values(MSA_BASE, RETRIEVAL), RETRIEVAL,
                                        'msa encoders, 1200 steps', '2400 steps')))


if __name__ == '__main__':
  main()
