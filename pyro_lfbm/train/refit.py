"""A second-stage density of a trained model's codes: a copy of its prior refit by maximum likelihood
to the latents that inference gives the training images, as the second stage of Dai & Wipf's two-stage
VAE ("Diagnosing and Enhancing VAE Models", ICLR 2019, Sec. 4), with the model's own flow as that stage.

A prior learned jointly with the generator fits the latents it was trained on (Langevin samples, or
draws z ~ q_φ(z | x) of an encoder guide); a decision function that reads it at other points (the
encoder's mean μ_φ(x), the end of a noise-free test chain) reads a density of something else. The
refit density is that of the very points that are scored.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Dict, List

import torch
from tqdm.auto import tqdm

from pyro_lfbm.priors.base import LatentPrior
from pyro_lfbm.train.loop import fit_steps
from pyro_lfbm.train.presets import _check_int, _check_positive

__all__ = ["CodeDensityFit", "refit_prior"]


@dataclass
class CodeDensityFit:
    """The result of :func:`refit_prior`.

    :ivar LatentPrior prior: the refit copy, in ``eval()`` mode, at its best validation epoch.
    :ivar list history: one row per epoch: ``epoch`` (0 is the starting prior), ``loss`` (mean −log q(z)
        over the fitting codes, the epoch's mean over its updates), ``validation_nll`` (mean −log q(z) over
        the validation codes) and ``seconds``.
    :ivar int best_epoch: the epoch whose state was kept (0: no epoch beat the starting prior).
    """

    prior: LatentPrior
    history: List[Dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0


class _MaximumLikelihood:
    """The :class:`~pyro_lfbm.train.loop.StepTrainer` of one Adam step on the mean −log q(z) of a batch of codes (B, D)."""

    def __init__(self, prior: LatentPrior, lr: float):
        self.model = prior
        self.optim = torch.optim.Adam(prior.parameters(), lr=lr)

    def step(self, z: torch.Tensor) -> Dict[str, float]:
        loss = -self.model.log_prob(z).mean()
        self.optim.zero_grad()
        loss.backward()
        self.optim.step()
        return {"loss": loss.item()}

    def end_epoch(self) -> None:
        pass

    def state_dict(self) -> dict:
        return {"prior": self.model.state_dict(), "optim": self.optim.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["prior"])
        self.optim.load_state_dict(state["optim"])


@torch.no_grad()
def _mean_nll(prior: LatentPrior, z: torch.Tensor, batch_size: int = 4096) -> float:
    return float(torch.cat([-prior.log_prob(chunk) for chunk in z.split(batch_size)]).mean())


def refit_prior(
    prior: LatentPrior,
    codes: torch.Tensor,
    *,
    epochs: int = 50,
    lr: float = 1e-3,
    batch_size: int = 256,
    validation_fraction: float = 0.1,
    patience: int = 5,
    seed: int = 0,
    progress: bool = False,
) -> CodeDensityFit:
    """Fit a copy of ``prior`` to ``codes`` by maximum likelihood, stopping early on held-out codes.

    A seeded ``validation_fraction`` of the codes is held out; the rest are fitted with Adam (``lr``)
    in shuffled batches of ``batch_size`` (or all of them when fewer) through :func:`~pyro_lfbm.train.loop.fit_steps` (non-finite
    updates refused) for at most ``epochs`` epochs, stopping after ``patience`` epochs without a lower
    mean −log q on the held-out codes; the state with the lowest is kept. ``prior`` itself is not changed.

    :param prior: a prior with parameters and a normalised density (``prior.normalised_density``; the
        energy prior's is unnormalised, so its likelihood can be neither maximised by this loss nor compared
        across epochs), e.g. :class:`~pyro_lfbm.priors.FlowPrior`.
    :param codes: (N, D) latents, D = ``prior.latent_dim``, e.g. the test-time z of the training images.
    :returns: a :class:`CodeDensityFit`.
    :raises ValueError: (one line, before any fitting) a prior without parameters or with an unnormalised
        density, codes of another shape or not finite, fewer than 2 codes, or an impossible setting.
    """
    if not getattr(prior, "normalised_density", False):
        raise ValueError(f"{type(prior).__name__} has an unnormalised density, which maximum likelihood cannot refit; "
                         "use a prior with a normalised density (the flow prior)")
    if next(iter(prior.parameters()), None) is None:
        raise ValueError(f"{type(prior).__name__} has no parameters to refit (the Gaussian prior is a fixed N(0, I)); "
                         "use the flow prior")
    if codes.dim() != 2 or codes.shape[1] != prior.latent_dim:
        raise ValueError(f"codes must have shape (N, {prior.latent_dim}), got {tuple(codes.shape)}")
    if not torch.isfinite(codes).all():
        raise ValueError("codes contain NaN or infinity; the inference that produced them diverged")
    for name, value in (("epochs", epochs), ("batch_size", batch_size), ("patience", patience)):
        _check_int(name, value, 1)
    if not 0 < validation_fraction < 1:
        raise ValueError(f"validation_fraction must be in (0, 1), got {validation_fraction!r}")
    _check_positive("lr", lr)
    num_validation = max(1, round(validation_fraction * codes.shape[0]))
    if codes.shape[0] - num_validation < 1:
        raise ValueError(f"{codes.shape[0]} codes leave none to fit after holding out {num_validation} for validation; "
                         "pass at least 2")
    batch_size = min(batch_size, codes.shape[0] - num_validation)

    fitted = copy.deepcopy(prior)
    like = next(iter(fitted.parameters()))
    order = torch.randperm(codes.shape[0], generator=torch.Generator().manual_seed(seed))
    codes = codes.detach().to(device=like.device, dtype=like.dtype)
    validation, fit_codes = codes[order[:num_validation]], codes[order[num_validation:]]
    trainer = _MaximumLikelihood(fitted, lr)

    fitted.eval()
    best = _mean_nll(fitted, validation)
    result = CodeDensityFit(fitted, [{"epoch": 0, "loss": _mean_nll(fitted, fit_codes), "validation_nll": best, "seconds": 0.0}])
    best_state = copy.deepcopy(fitted.state_dict())
    bar = tqdm(range(1, epochs + 1), desc="refit prior", disable=not progress, leave=False, dynamic_ncols=True)
    for epoch in bar:
        started = time.perf_counter()
        fitted.train()
        row = fit_steps(trainer, fit_codes, epochs=1, batch_size=batch_size, seed=seed + epoch, device=like.device,
                        progress=False).epochs[0]
        fitted.eval()
        nll = _mean_nll(fitted, validation)
        result.history.append({"epoch": epoch, "loss": row["loss"], "validation_nll": nll,
                               "seconds": time.perf_counter() - started})
        bar.set_postfix(validation_nll=f"{nll:.3f}")
        if nll < best:
            best, result.best_epoch, best_state = nll, epoch, copy.deepcopy(fitted.state_dict())
        elif epoch - result.best_epoch >= patience:
            break
    bar.close()
    fitted.load_state_dict(best_state)
    return result
