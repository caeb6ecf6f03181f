"""The models: :class:`LatentModel` (p_α(z) p_β(x | z) as a Pyro model: LFBM, ABP, LEBM), its
hierarchical form :class:`HierarchicalLatentModel` (latents at several generator layers, one joint prior), :class:`GLF`
(Generative Latent Flow), :class:`CoopFlow` and its image flow :class:`ImageFlow`. Their trainers,
configurations and presets are in :mod:`pyro_lfbm.train`; their metrics in :mod:`pyro_lfbm.metrics`."""

from pyro_lfbm.models.coopflow import CoopFlow
from pyro_lfbm.models.glf import GLF
from pyro_lfbm.models.hierarchical import HierarchicalLatentModel
from pyro_lfbm.models.image_flow import ImageFlow
from pyro_lfbm.models.latent_model import PIXEL_LIKELIHOODS, LatentModel, PixelBernoulli, check_pixel_likelihood

__all__ = ["PIXEL_LIKELIHOODS", "CoopFlow", "GLF", "HierarchicalLatentModel", "ImageFlow", "LatentModel", "PixelBernoulli", "check_pixel_likelihood"]
