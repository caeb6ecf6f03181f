"""Invertible linear map with an LU-parametrised weight (Glow's invertible 1x1 "convolution")."""

from __future__ import annotations

import torch
from pyro.distributions import constraints
from pyro.distributions.torch_transform import TransformModule
from torch import nn


def _plain_eager() -> bool:
    """True outside inference mode, torch.compile tracing and torch.func transforms: only then is
    a cached tensor an ordinary tensor that is safe to reuse in later calls."""
    if torch.is_inference_mode_enabled() or torch.compiler.is_compiling():
        return False
    try:
        return torch._C._functorch.maybe_current_level() is None
    except AttributeError:  # pragma: no cover - older torch
        return True


class LULinear(TransformModule):
    r"""
    Invertible linear bijection :math:`\mathbf{y} = W\mathbf{x}`, computed on row vectors as
    ``y = x @ W.T`` (the :class:`torch.nn.Linear` convention), with

        :math:`W = P L U`,

    where :math:`P` is a fixed permutation (buffer ``perm``; :math:`PM` = ``M[perm]``), :math:`L`
    is unit lower-triangular (learnable strictly-lower entries ``lower_entries``) and :math:`U` is
    upper-triangular with learnable strictly-upper entries ``upper_entries`` and diagonal
    ``diag_sign * exp(log_abs_diag)`` (``diag_sign`` a fixed buffer of +-1; not called ``sign``,
    which :class:`~torch.distributions.transforms.Transform` reserves). Hence
    :math:`\log|\det W| = \sum_i` ``log_abs_diag[i]`` at no cost, and the inverse is two triangular
    solves (no matrix inverse, no determinant per call).

    :math:`W` is initialised to a random orthogonal matrix (QR of a Gaussian matrix, then its LU
    decomposition with partial pivoting), drawn from the global torch RNG.

    Shapes: ``x`` and ``y`` are ``(..., input_dim)``; ``log_abs_det_jacobian`` is ``(...)``;
    :attr:`weight` is ``(input_dim, input_dim)``.

    Example::

        >>> t = LULinear(4)
        >>> x = torch.randn(10, 4)
        >>> torch.allclose(t.inv(t(x)), x, atol=1e-5)
        True

    :param int input_dim: size D of the event.
    """

    domain = constraints.real_vector
    codomain = constraints.real_vector
    bijective = True

    def __init__(self, input_dim: int):
        super().__init__(cache_size=0)
        if input_dim < 1:
            raise ValueError(f"input_dim must be >= 1, got {input_dim}")
        self.input_dim = input_dim
        q, _ = torch.linalg.qr(torch.randn(input_dim, input_dim))
        p, lower, upper = torch.linalg.lu(q)
        diag = upper.diagonal()
        rows, cols = torch.tril_indices(input_dim, input_dim, offset=-1)
        self.register_buffer("perm", p.argmax(dim=-1))  # P @ M == M[perm]
        self.register_buffer("diag_sign", diag.sign())
        # Index buffers are derived from input_dim: they follow .to() but stay out of state_dict.
        self.register_buffer("_tril_idx", torch.stack([rows, cols]), persistent=False)
        self.register_buffer("_triu_idx", torch.stack([cols, rows]), persistent=False)
        self.lower_entries = nn.Parameter(lower[rows, cols].clone())
        self.upper_entries = nn.Parameter(upper[cols, rows].clone())
        self.log_abs_diag = nn.Parameter(diag.abs().log())

    def _factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """:returns: ``(L, U)``, each ``(input_dim, input_dim)``."""
        d = self.input_dim
        eye = torch.eye(d, dtype=self.log_abs_diag.dtype, device=self.log_abs_diag.device)
        lower = eye.index_put(tuple(self._tril_idx), self.lower_entries)
        upper = torch.diag(self.diag_sign * self.log_abs_diag.exp())
        upper = upper.index_put(tuple(self._triu_idx), self.upper_entries)
        return lower, upper

    @property
    def weight(self) -> torch.Tensor:
        """The assembled matrix :math:`W = PLU`, shape ``(input_dim, input_dim)``.

        When no gradient can flow to the parameters (they are frozen, or grad mode is off) the
        matrix is cached and reused until a parameter changes (in-place updates bump tensor
        versions, ``.to()``/``load_state_dict`` change storage or version), so a Langevin chain
        run with frozen parameters assembles W once instead of once per step.
        """
        params = (self.lower_entries, self.upper_entries, self.log_abs_diag)
        if (torch.is_grad_enabled() and any(p.requires_grad for p in params)) or not _plain_eager():
            return self._assemble()
        key = tuple((t.data_ptr(), t._version, t.device, t.dtype) for t in (*params, self.perm, self.diag_sign))
        cached = self.__dict__.get("_weight_cache")
        if cached is not None and cached[0] == key:
            return cached[1]
        weight = self._assemble()
        self.__dict__["_weight_cache"] = (key, weight)
        return weight

    def _assemble(self) -> torch.Tensor:
        lower, upper = self._factors()
        return (lower @ upper)[self.perm]

    def __getstate__(self):
        state = super().__getstate__()
        state.pop("_weight_cache", None)
        return state

    def _call(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.weight)

    def _inverse(self, y: torch.Tensor) -> torch.Tensor:
        # y = x U^T L^T P^T  =>  x U^T L^T = y P = y[..., inv_perm]; solve for row vectors.
        lower, upper = self._factors()
        rhs = y[..., torch.argsort(self.perm)].reshape(-1, self.input_dim)
        w = torch.linalg.solve_triangular(lower.T, rhs, upper=True, left=False, unitriangular=True)
        x = torch.linalg.solve_triangular(upper.T, w, upper=False, left=False)
        return x.reshape(y.shape)

    def log_abs_det_jacobian(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """:returns: ``sum(log_abs_diag)`` broadcast to the batch shape ``x.shape[:-1]``."""
        return self.log_abs_diag.sum().expand(x.shape[:-1])


def lu_linear(input_dim: int) -> LULinear:
    """
    Build an :class:`LULinear` transform initialised at a random orthogonal matrix.

    :param int input_dim: size D of the event.
    :rtype: LULinear
    """
    return LULinear(input_dim)
