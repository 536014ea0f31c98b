"""gmscavp_jax: multi-scale contrastive and generative audio-video pretraining (GMS-CAVP) in JAX.

Wings (models/, losses/, diffusion/, data/, evaluators/) are composed by `steps.py` and
`train.py`; see DESIGN.md section 8 for the map of the package.
"""
