"""Networks: video/audio encoders, the multi-scale pyramid and the GMS-CAVP module."""

from gmscavp_jax.models.encoders import AudioEncoder
from gmscavp_jax.models.encoders import VideoEncoder
from gmscavp_jax.models.gmscavp import build_model
from gmscavp_jax.models.gmscavp import GMSCAVP
from gmscavp_jax.models.pyramid import Pyramid
from gmscavp_jax.models.pyramid import retrieval_embedding
