"""Test metrics and samples of the generation baselines: GLF (:func:`evaluate_glf`) and CoopFlow
(:func:`evaluate_coopflow`)."""

from __future__ import annotations

from typing import Dict

import torch

from pyro_lfbm.infer.modes import eval_mode
from pyro_lfbm.models.coopflow import CoopFlow
from pyro_lfbm.models.glf import GLF
from pyro_lfbm.models.image_flow import dequantize

__all__ = ["evaluate_coopflow", "evaluate_glf"]


@torch.no_grad()
def evaluate_glf(model: GLF, x_test: torch.Tensor, num_samples: int, batch_size: int = 500) -> Dict[str, object]:
    """Test metrics and images of a trained GLF, in ``eval()`` mode (restored afterwards).

    :param x_test: test images (N, C, H, W) in [-1, 1], on any device.
    :returns: ``recon_mse`` (per pixel, [-1, 1] units, of G(E(x)): one encoder pass),
        ``test_code_nll`` (mean −log p_α(E(x))), ``code_std`` (mean per-dimension std of the
        codes), and on the CPU ``reconstructions`` (N, C, H, W) and ``samples`` (num_samples, C, H, W).
    """
    device = next(model.parameters()).device
    with eval_mode(model):
        recon = torch.cat([model.reconstruct(xb.to(device)).cpu() for xb in x_test.split(batch_size)])
        codes = torch.cat([model.encode(xb.to(device)).cpu() for xb in x_test.split(batch_size)])
        samples = torch.cat([model.sample(min(batch_size, num_samples - i)).cpu() for i in range(0, num_samples, batch_size)])
        test_nll = -model.prior.log_prob(codes.to(device)).mean().item()
    return {"recon_mse": (recon - x_test.cpu()).pow(2).mean().item(), "test_code_nll": test_nll,
            "code_std": codes.std(0).mean().item(), "reconstructions": recon, "samples": samples}


def evaluate_coopflow(model: CoopFlow, x_reference: torch.Tensor, num_samples: int, batch_size: int = 250,
                      score_size: int = 500) -> Dict[str, object]:
    """Samples of a trained CoopFlow before and after Langevin revision, and how each is scored.

    :param x_reference: real images (M, C, H, W) in [-1, 1] (e.g. the training images).
    :param score_size: how many images of each kind the scores and bits/dim average over.
    :returns: on the CPU ``flow_samples`` and ``samples`` (revised), each (num_samples, C, H, W);
        ``score_flow_samples`` / ``score_revised_samples`` / ``score_data`` (mean EBM score f_θ),
        ``flow_bpd_revised`` / ``flow_bpd_data`` (flow bits per dimension, dequantized).
    """
    device = next(model.parameters()).device
    before, after = [], []
    for i in range(0, num_samples, batch_size):
        x0 = model.sample_flow(min(batch_size, num_samples - i))
        before.append(x0.cpu())
        after.append(model.revise(x0).cpu())
    flow_samples, samples = torch.cat(before), torch.cat(after)
    data = x_reference[:score_size].to(device)
    with torch.no_grad():
        return {
            "flow_samples": flow_samples, "samples": samples,
            "score_flow_samples": model.score(flow_samples[:score_size].to(device)).mean().item(),
            "score_revised_samples": model.score(samples[:score_size].to(device)).mean().item(),
            "score_data": model.score(data).mean().item(),
            "flow_bpd_revised": model.flow.bits_per_dim(dequantize(samples[:score_size].to(device))).mean().item(),
            "flow_bpd_data": model.flow.bits_per_dim(dequantize(data)).mean().item(),
        }
