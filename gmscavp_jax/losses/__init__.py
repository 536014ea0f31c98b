"""Losses on arrays (no model imports): the MSA contrastive loss (CAVP = one scale)."""

from gmscavp_jax.losses.contrastive import msa_loss
from gmscavp_jax.losses.contrastive import segment_embeddings
