"""The one place where a computed row learns whether its structure is inside the model's
training domain: ``TensorNetModel.domain_issues(z, q)`` (elements the model was not trained
on, named by symbol; a charge given to a model trained without charges). A row with issues
keeps its numbers and says so in ``status``: ``ok; <issue>; <issue>``. Rows whose status is
exactly ``ok`` are inside the domain as far as the model can tell."""

from __future__ import annotations

import torch

from .readers import Record


def domain_issues(model: torch.nn.Module, rec: Record) -> list[str]:
    """The model's messages for this record (none for models without ``domain_issues``)."""
    check = getattr(model, "domain_issues", None)
    if check is None:
        return []
    q = None if not rec.charge else torch.tensor([float(rec.charge)], dtype=torch.float64)
    return [str(m) for m in check(torch.from_numpy(rec.z), q)]


def domain_status(model: torch.nn.Module, rec: Record) -> str:
    issues = domain_issues(model, rec)
    return "ok" if not issues else "ok; " + "; ".join(issues)
