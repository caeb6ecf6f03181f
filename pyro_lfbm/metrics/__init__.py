"""Measuring models and inference: AUPRC / AP / AUROC and the anomaly decision functions
(:mod:`~pyro_lfbm.metrics.anomaly`), reconstruction error, the log joint's terms and IWAE
estimates of log p(x) (:mod:`~pyro_lfbm.metrics.evaluation`), and Fréchet distances
(:mod:`~pyro_lfbm.metrics.fid`)."""

from pyro_lfbm.metrics.anomaly import (
    DECISION_FUNCTIONS,
    anomaly_metrics,
    anomaly_scores,
    conditional_prior_draws,
    importance_weighted_likelihood_ratio,
    lower_layer_likelihood_ratio,
)
from pyro_lfbm.metrics.evaluation import (
    GaussianProposal,
    GuideProposal,
    inference_row,
    iwae_log_px,
    langevin_trajectory,
    latent_rate,
    log_joint_terms,
    reconstruction_mse,
)
from pyro_lfbm.metrics.fid import ClassifierFeatures, frechet_distance, inception_fid, inception_status, sample_frechet_distance

__all__ = [
    "ClassifierFeatures",
    "DECISION_FUNCTIONS",
    "GaussianProposal",
    "GuideProposal",
    "anomaly_metrics",
    "anomaly_scores",
    "conditional_prior_draws",
    "frechet_distance",
    "inception_fid",
    "importance_weighted_likelihood_ratio",
    "inception_status",
    "inference_row",
    "iwae_log_px",
    "langevin_trajectory",
    "latent_rate",
    "log_joint_terms",
    "lower_layer_likelihood_ratio",
    "reconstruction_mse",
    "sample_frechet_distance",
]
