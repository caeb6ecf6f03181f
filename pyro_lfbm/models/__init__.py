from pyro_lfbm.models.latent_model import LatentModel
from pyro_lfbm.models.coopflow import CoopFlow, CoopFlowConfig, CoopFlowOptim, CoopFlowTrainer, coopflow_preset, evaluate_coopflow
from pyro_lfbm.models.glf import GLF, GLFConfig, GLFTrainer, evaluate_glf, glf_preset
from pyro_lfbm.models.image_flow import ImageFlow

__all__ = [
    "CoopFlow",
    "CoopFlowConfig",
    "CoopFlowOptim",
    "CoopFlowTrainer",
    "GLF",
    "GLFConfig",
    "GLFTrainer",
    "ImageFlow",
    "LatentModel",
    "coopflow_preset",
    "evaluate_coopflow",
    "evaluate_glf",
    "glf_preset",
]
