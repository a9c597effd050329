"""Compression methods are one module each, discovered by the job: the CLI's choices and
the recipe's validation come from them, a new one is one file, and a combination a method
cannot make is refused by name."""

import textwrap
from pathlib import Path

import pytest

from app.errors import SparsegateError
from app.job import methods
from app.job.methods import Stage
from app.job.recipe import Recipe
from app.registry.embedded import EmbeddedRegistry
from tests.conftest import run_cli

METHODS_DIR = Path(__file__).resolve().parents[1] / "app" / "job" / "methods"


def test_each_method_is_one_module_of_the_package():
    assert methods.names(Stage.prune) == ["magnitude", "sparsegpt", "wanda"]
    assert methods.names(Stage.quant) == ["w4a16", "w8a8"]
    assert methods.names(Stage.recover) == ["kd", "lora"]
    assert methods.names(Stage.trim) == ["vocab"]
    for (stage, name), cls in methods.methods().items():
        assert cls.__module__ == f"app.job.methods.{name}", (stage, name)
        assert (METHODS_DIR / f"{name}.py").is_file()
    chosen = Recipe(trim_vocab=1000, prune="wanda", recover="lora", quant="w8a8").methods()
    assert [m.stage for m in chosen] == [Stage.trim, Stage.prune, Stage.recover, Stage.quant]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"prune": "sparsegpt", "pattern": "channels"},
         "--prune sparsegpt cannot prune to --pattern channels; methods that can: magnitude, "
         "wanda"),
        ({"prune": "pruney"}, "unknown --prune 'pruney': use one of none, magnitude, sparsegpt"),
        ({"quant": "int3"}, "unknown --quant 'int3': use one of none, w4a16, w8a8"),
        ({"recover": "qlora"}, "unknown --recover 'qlora': use one of none, kd, lora"),
    ],
)  # fmt: skip
def test_combinations_that_do_not_exist_are_refused_by_name(args, message):
    with pytest.raises(SparsegateError, match=message.replace("(", r"\(")):
        Recipe(**args)


PLUGIN = textwrap.dedent(
    '''
    """A pruning method in one file: zero every other input column of each decoder Linear."""

    from app.job.methods import Job
    from app.job.pruning import Pruning


    class EveryOther(Pruning):
        name = "everyother"
        summary = "every other input column (a test's method)"
        patterns = ("unstructured",)

        def prune(self, job: Job, target: float) -> None:
            import torch

            from app.job.stats import prunable_linears

            with torch.no_grad():
                for layer in prunable_linears(job.model).values():
                    layer.weight[:, ::2] = 0.0
    '''
)


def test_a_new_method_in_one_file_is_picked_up_by_the_cli_and_the_recipe(tiny_registry, tmp_path):
    (tmp_path / "everyother.py").write_text(PLUGIN)
    env = {"SPARSEGATE_METHODS": str(tmp_path)}
    shown = run_cli("compress", "--help", **env)
    assert shown.returncode == 0 and "everyother" in shown.stdout
    proc = run_cli(
        "compress", "tiny", "--prune", "everyother", "--name", "tiny-eo",
        "--calibration-samples", "4", "--eval-windows", "2", registry=tiny_registry, **env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr + proc.stdout
    reg = EmbeddedRegistry(tiny_registry)
    variant = reg.get("tiny-eo")
    reg.remove("tiny-eo")  # the session's tiny registry stays as other tests expect it
    assert variant.recipe["prune"] == "everyother" and variant.sparsity == pytest.approx(0.5)
    refused = run_cli(
        "compress", "tiny", "--prune", "everyother", "--pattern", "2:4", registry=tiny_registry,
        **env,
    )  # fmt: skip
    assert refused.returncode == 2
    assert "--prune everyother cannot prune to --pattern 2:4" in refused.stderr
    unknown = run_cli("compress", "tiny", "--prune", "everyother", registry=tiny_registry)
    assert unknown.returncode == 2 and "unknown --prune 'everyother'" in unknown.stderr


def test_int4_groups_divide_every_layer_width():
    from app.job.methods.w4a16 import group_size

    assert group_size({640, 2048}) == 128  # Gemma 3 270M
    assert group_size({576, 1536, 1152}) == 64  # SmolLM2-135M, also with channels pruned
    assert group_size({128, 96}) == 32
    with pytest.raises(SparsegateError, match="divisible by 32; this model's are 100, 128"):
        group_size({128, 100})
