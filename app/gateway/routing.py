"""Which variant serves a request: by name, by alias (weighted, sticky per user), pinned."""

import hashlib
import random

from app.gateway.config import Deployment
from app.gateway.errors import GatewayError


class Router:
    def __init__(self, deployment: Deployment, rng: random.Random | None = None) -> None:
        self.deployment = deployment
        self.rng = rng or random.Random()

    def candidates(self, model: str, user: str | None = None, pin: str | None = None) -> list[str]:
        """The variants to try, in order: the chosen one first, then its fallbacks."""
        variants, aliases = self.deployment.variants, self.deployment.aliases
        if pin is not None:
            if pin not in variants:
                raise GatewayError(404, f"pinned variant {pin!r} is not served", param="model")
            return [pin]
        if model in variants:
            return [model]
        alias = aliases.get(model)
        if alias is None:
            known = sorted([*variants, *aliases])
            raise GatewayError(
                404, f"model {model!r} does not exist; served: {', '.join(known)}", param="model"
            )
        weighted = [(v, w) for v, w in alias.split.items() if w > 0]
        total = sum(w for _, w in weighted)
        # Sticky: the same user always draws the same point of the split.
        point = (_unit(user) if user else self.rng.random()) * total
        chosen = weighted[-1][0]
        for variant, weight in weighted:
            if point < weight:
                chosen = variant
                break
            point -= weight
        # Fallbacks: every other variant the alias allows, weight 0 included (a standby).
        rest = sorted((v for v in alias.split if v != chosen), key=lambda v: -alias.split[v])
        return [chosen, *rest]

    def shadow_for(self, model: str) -> str | None:
        alias = self.deployment.aliases.get(model)
        if alias is None or alias.shadow is None:
            return None
        return alias.shadow.variant if self.rng.random() < alias.shadow.fraction else None


def _unit(key: str) -> float:
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2**64
