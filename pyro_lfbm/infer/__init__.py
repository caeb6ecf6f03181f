"""Posterior inference: short-run Langevin (guide and pure step function), MCMC kernels, encoder
and hybrid guides, and per-image baselines (AutoNormal, MALA)."""

from pyro_lfbm.infer.adaptation import StepSizeAdaptation
from pyro_lfbm.infer.baselines import AutoNormalFit, MALAReference, fit_autonormal, mala_reference
from pyro_lfbm.infer.dataset import InferenceResult, infer_dataset
from pyro_lfbm.infer.encoder_guide import ConditionalEncoderGuide, EncoderGuide, LayerChainNormal, encode_dataset
from pyro_lfbm.infer.guide import LangevinGuide
from pyro_lfbm.infer.hybrid import HybridGuide, hybrid_infer_dataset
from pyro_lfbm.infer.kernel import LangevinKernel
from pyro_lfbm.infer.langevin import (
    ChainInfo,
    LangevinState,
    evaluate,
    langevin_move,
    langevin_step,
    run_chain,
    short_run_langevin,
    value_and_grad,
)
from pyro_lfbm.infer.divergence import DivergencePolicy, LangevinDivergenceError
from pyro_lfbm.infer.mala import MALAInfo, mala_step
from pyro_lfbm.infer.samplers import MALA, ULA, Sampler, StepInfo
from pyro_lfbm.infer.persistent import PersistentChains
from pyro_lfbm.infer.trace_log_joint import LatentSites, find_latent_sites, log_joint_terms, per_example_log_joint

__all__ = [
    "AutoNormalFit",
    "ChainInfo",
    "ConditionalEncoderGuide",
    "EncoderGuide",
    "LayerChainNormal",
    "HybridGuide",
    "InferenceResult",
    "LangevinGuide",
    "DivergencePolicy",
    "LangevinDivergenceError",
    "LangevinKernel",
    "LangevinState",
    "LatentSites",
    "PersistentChains",
    "Sampler",
    "StepSizeAdaptation",
    "StepInfo",
    "ULA",
    "MALA",
    "MALAInfo",
    "MALAReference",
    "encode_dataset",
    "evaluate",
    "fit_autonormal",
    "find_latent_sites",
    "hybrid_infer_dataset",
    "infer_dataset",
    "langevin_move",
    "langevin_step",
    "log_joint_terms",
    "mala_step",
    "mala_reference",
    "per_example_log_joint",
    "run_chain",
    "short_run_langevin",
    "value_and_grad",
]
