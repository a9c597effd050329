"""What every pruning method shares: the shapes (patterns) it may prune to, checked by name,
and the modules llm-compressor prunes. The methods themselves are `app/job/methods/`
(magnitude, wanda, sparsegpt); structured (channel) pruning's tensor work is
`app/job/structured.py`."""

from typing import Any, ClassVar

from app.errors import SparsegateError
from app.job.methods import Job, Method, Stage, get, names

# Modules llm-compressor prunes: the Linear layers inside the decoder blocks.
TARGETS = ["re:.*layers\\.\\d+\\..*"]


class Pruning(Method):
    stage = Stage.prune
    # unstructured, n:m (N zeros in every M weights of a row), channels (whole MLP channels)
    patterns: ClassVar[tuple[str, ...]] = ("unstructured", "n:m")
    # uniform: every decoder layer pruned to the target; owl: per layer (app/job/allocation.py)
    allocations: ClassVar[tuple[str, ...]] = ("uniform",)

    @property
    def shape(self) -> str:
        if self.recipe.structured:
            return "channels"
        return "n:m" if self.recipe.nm else "unstructured"

    @property
    def mask_structure(self) -> str:
        nm = self.recipe.nm
        return f"{nm[0]}:{nm[1]}" if nm else "0:0"

    def check(self) -> None:
        # A method asked for a shape it cannot make is refused by name, never replaced by
        # another method's version of it.
        if self.shape not in self.patterns:
            able = [n for n in names(Stage.prune) if self.shape in get(Stage.prune, n).patterns]
            raise SparsegateError(
                f"--prune {self.name} cannot prune to --pattern {self.recipe.pattern}; "
                f"methods that can: {', '.join(able) or 'none'}"
            )
        allocation = self.recipe.allocation
        if allocation != "uniform" and self.shape != "unstructured":
            raise SparsegateError(f"--allocation {allocation} needs unstructured pruning")
        if allocation not in self.allocations:
            able = [n for n in names(Stage.prune) if allocation in get(Stage.prune, n).allocations]
            raise SparsegateError(
                f"--prune {self.name} cannot allocate --allocation {allocation}; methods that "
                f"can: {', '.join(able) or 'none'}"
            )

    def sparsity_for(self, job: Job, target: float) -> float | list[float]:
        """What llm-compressor's modifiers are given: the target, or OWL's value per target
        module (the outlier ratios measured once, on the model before any pruning)."""
        if self.recipe.allocation == "uniform":
            return target
        from app.job.allocation import outlier_ratios, owl_from_ratios, per_target

        if "owl_ratios" not in job.extra:
            with job.steps.step("Measuring outlier ratios per layer (OWL)"):
                job.extra["owl_ratios"] = outlier_ratios(job.model, job.calib)
        layers = owl_from_ratios(job.extra["owl_ratios"], target)
        job.extra["layer_sparsity"] = layers
        return per_target(job.model, TARGETS, layers)

    def apply(self, job: Job, target: float | None = None) -> dict[str, Any] | None:
        assert target is not None
        with job.steps.step(f"Pruning ({self.name}, {self.recipe.pattern}, {target:.0%})"):
            if self.shape == "channels":
                from app.job.structured import prune_channels

                kept = prune_channels(job.model, self.channel_scores(job), target)
                return {"intermediate_size": kept}
            self.prune(job, target)
        return None

    def prune(self, job: Job, target: float) -> None:
        """Unstructured or N:M pruning of the decoder's Linear weights to `target`."""
        raise NotImplementedError

    def channel_scores(self, job: Job) -> list[Any]:
        """Per MLP layer, one importance score per channel (methods that prune channels)."""
        raise NotImplementedError
