from pyro_lfbm.models.latent_model import LatentModel

__all__ = ["LatentModel"]
