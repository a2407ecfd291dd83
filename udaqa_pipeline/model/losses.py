"""UD-AQA losses as pure functions (REFERENCE section 1).

L = L_RAQA + alpha * L_latent + beta * L_u with
  L_RAQA   = exp(-u) * |y_hat - y| + u      (y scalar, so ||.||_2 is the absolute value)
  L_latent = KL(Q(z|X,y) || P(z|X))         (diagonal Gaussians, summed over the D dims)
  L_u      = |u1 - u2|                      (prior vs posterior uncertainty)
Every term is averaged over the batch.
"""

from __future__ import annotations

import torch


def raqa_loss(y_hat: torch.Tensor, y: torch.Tensor, u: torch.Tensor | None) -> torch.Tensor:
    """Uncertainty re-weighted L1: mean(exp(-u) |y_hat - y| + u); plain mean |y_hat - y| if u is None."""
    err = (y_hat - y).abs()
    if u is None:
        return err.mean()
    return (torch.exp(-u) * err + u).mean()


def kl_gaussian(mu_q: torch.Tensor, logvar_q: torch.Tensor, mu_p: torch.Tensor,
                logvar_p: torch.Tensor) -> torch.Tensor:
    """KL(N(mu_q, var_q) || N(mu_p, var_p)) for diagonal Gaussians, summed over the last dim, (B,).

    Closed form per dim: 0.5 * (logvar_p - logvar_q + (var_q + (mu_q - mu_p)^2) / var_p - 1).
    """
    var_q = logvar_q.exp()
    var_p = logvar_p.exp()
    kl = 0.5 * (logvar_p - logvar_q + (var_q + (mu_q - mu_p) ** 2) / var_p - 1.0)
    return kl.sum(dim=-1)


def uncertainty_consistency(u1: torch.Tensor, u2: torch.Tensor) -> torch.Tensor:
    """mean |u1 - u2|: keeps the prior's test-time uncertainty close to the posterior's."""
    return (u1 - u2).abs().mean()


def total_loss(out: dict[str, torch.Tensor], y: torch.Tensor, *, alpha: float = 1.0,
               beta: float = 10.0, mean_target: torch.Tensor | None = None
               ) -> dict[str, torch.Tensor]:
    """Combine the terms for whatever the model produced (ablated parts give no term).

    ``out`` is :meth:`UDAQA.forward` output in training mode. When the model has two regressors,
    ``out["y_mean"]`` is the deterministic head's prediction of the judge mean and it gets an extra
    L1 term against ``mean_target``. Returns a dict with ``loss`` and each term (detached floats are
    taken by the caller for logging).
    """
    terms: dict[str, torch.Tensor] = {}
    terms["raqa"] = raqa_loss(out["y_hat"], y, out.get("u"))
    loss = terms["raqa"]
    if "mu_q" in out:
        terms["kl"] = kl_gaussian(out["mu_q"], out["logvar_q"], out["mu_p"], out["logvar_p"]).mean()
        loss = loss + alpha * terms["kl"]
    if "u_prior" in out and "u" in out:
        terms["u"] = uncertainty_consistency(out["u_prior"], out["u"])
        loss = loss + beta * terms["u"]
    if "y_mean" in out:
        if mean_target is None:
            raise ValueError("a two-regressor model needs mean_target (the judge mean)")
        terms["mean"] = (out["y_mean"] - mean_target).abs().mean()
        loss = loss + terms["mean"]
    terms["loss"] = loss
    return terms
