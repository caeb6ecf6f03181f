import pyro
import torch

from pyro_lfbm import EnergyPrior
from pyro_lfbm._context import posterior_inference


def test_contrastive_term_has_zero_value_and_mle_gradient():
    prior = EnergyPrior(2, hidden_dims=(8,), num_prior_steps=5).train()
    z = torch.randn(16, 2)
    with_term = prior.dist().log_prob(z)
    plain = prior.dist().unnormalised_log_prob(z)
    assert torch.allclose(with_term, plain)
    with posterior_inference():
        assert not prior.dist().contrastive
    prior.eval()
    assert not prior.dist().contrastive
    prior.train()
    # gradient of log_prob wrt energy parameters = -dE(z) + mean dE(negatives)
    pyro.set_rng_seed(3)
    d = prior.dist()
    loss = -d.log_prob(z).sum()
    params = list(prior.energy_net.parameters())
    grads = torch.autograd.grad(loss, params)
    pyro.set_rng_seed(3)
    negatives = prior.sample_negatives(16)
    expected = torch.autograd.grad(prior.energy(z).sum() - 16 * prior.energy(negatives).mean(), params)
    for g, e in zip(grads, expected):
        assert torch.allclose(g, e, atol=1e-5)


def test_learning_moves_prior_toward_toy_target():
    """Maximum likelihood on 2-D data N((1.5, -1), diag(0.3², 0.5²)) through the contrastive gradient."""
    pyro.set_rng_seed(0)
    prior = EnergyPrior(2, hidden_dims=(32, 32), activation="gelu", num_prior_steps=60, prior_step_size=0.4)
    mean, std = torch.tensor([1.5, -1.0]), torch.tensor([0.3, 0.5])
    optim = torch.optim.Adam(prior.parameters(), lr=1e-3, betas=(0.5, 0.999))
    for _ in range(300):
        z = mean + std * torch.randn(128, 2)
        loss = -prior.dist().log_prob(z).mean()
        optim.zero_grad()
        loss.backward()
        optim.step()
    samples = prior.sample((2000,))
    assert torch.allclose(samples.mean(0), mean, atol=0.2), samples.mean(0)
    assert torch.allclose(samples.std(0), std, atol=0.2), samples.std(0)
    # before training the prior sits at N(0, I) (far from the target)
    fresh = EnergyPrior(2, hidden_dims=(32, 32)).sample((4000,))
    assert (fresh.mean(0) - mean).abs().max() > 0.8
