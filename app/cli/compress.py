"""`sparsegate compress`: the offline job."""

from pathlib import Path
from typing import Annotated

import typer

from app.cli.envs import run_in
from app.cli.models import RegistryOpt, _home, _size, console
from app.errors import Interrupted, SparsegateError
from app.job.methods import Stage, choices
from app.job.recipe import SEARCH_STEP, Recipe


def compress(
    base: Annotated[str, typer.Argument(help="Registered variant to start from")],
    prune: Annotated[str, typer.Option(help=choices(Stage.prune))] = "none",
    sparsity: Annotated[
        float | None, typer.Option(help="Share of weights to zero, 0.0-0.95 [default: 0.5]")
    ] = None,
    pattern: Annotated[
        str, typer.Option(help="unstructured, N:M such as 2:4, or channels (whole MLP channels)")
    ] = "unstructured",
    quant: Annotated[str, typer.Option(help=choices(Stage.quant))] = "none",
    name: Annotated[str | None, typer.Option(help="Variant name [default: from recipe]")] = None,
    calibration_samples: Annotated[int, typer.Option(help="Calibration windows")] = 32,
    seq_len: Annotated[int, typer.Option(help="Tokens per window")] = 256,
    calibration_data: Annotated[
        Path | None, typer.Option(help="Text file for calibration [default: built-in text]")
    ] = None,
    calibration_text: Annotated[
        str,
        typer.Option(
            help="Built-in calibration text: mixed (Python docs + English prose) or pydoc"
        ),
    ] = "mixed",
    eval_windows: Annotated[int, typer.Option(min=1, help="Held-out windows")] = 16,
    recover: Annotated[str, typer.Option(help=choices(Stage.recover))] = "none",
    steps: Annotated[int, typer.Option(help="Training steps per recovery")] = 100,
    teacher: Annotated[
        str | None, typer.Option(help="kd: registered teacher [default: the dense base]")
    ] = None,
    lr: Annotated[float | None, typer.Option(help="kd: learning rate [default: 5e-5]")] = None,
    batch: Annotated[int, typer.Option(help="kd: windows per step")] = 4,
    seed: Annotated[int, typer.Option(help="kd: seed of the windows' order")] = 0,
    temperature: Annotated[float, typer.Option(help="kd: softmax temperature of the KL")] = 1.0,
    ce_weight: Annotated[
        float, typer.Option(help="kd: weight of the next-token cross-entropy added to the KL")
    ] = 0.0,
    feature_weight: Annotated[
        float, typer.Option(help="kd: weight of the per-layer feature loss (SquareHead)")
    ] = 0.0,
    teacher_text: Annotated[
        int, typer.Option(help="kd: windows of teacher-generated text to train on as well")
    ] = 0,
    schedule: Annotated[
        str | None, typer.Option(help="Iterative sparsities, e.g. 0.3,0.5 (prune, recover, ...)")
    ] = None,
    allocation: Annotated[
        str, typer.Option(help="Sparsity per layer: uniform, or owl (outlier-weighted)")
    ] = "uniform",
    max_bpb_ratio: Annotated[
        float | None,
        typer.Option(
            help="Find the largest sparsity within this ratio to dense bits per byte on both "
            "evaluation texts (instead of --sparsity)"
        ),
    ] = None,
    search_step: Annotated[
        float,
        typer.Option(help="With --max-bpb-ratio: stop searching when the interval is this narrow"),
    ] = SEARCH_STEP,
    trim_vocab: Annotated[
        int | None, typer.Option(help="Keep K vocabulary rows (embedding / LM head)")
    ] = None,
    vocab_corpus: Annotated[
        Path | None,
        typer.Option(help="Text file or folder to rank tokens by [default: built-in corpus]"),
    ] = None,
    registry: RegistryOpt = None,
) -> None:
    """Prune and/or quantize a registered model, evaluate it against its dense base, register it."""
    # Validate before handing over: bad input fails fast, in either environment.
    recipe = Recipe(
        prune=prune,
        sparsity=sparsity,
        pattern=pattern,
        quant=quant,
        calibration_samples=calibration_samples,
        seq_len=seq_len,
        calibration_data=calibration_data,
        calibration_text=calibration_text,
        recover=recover,
        steps=steps,
        teacher=teacher,
        lr=lr,
        batch=batch,
        seed=seed,
        temperature=temperature,
        ce_weight=ce_weight,
        feature_weight=feature_weight,
        teacher_text=teacher_text,
        schedule=_floats(schedule) if schedule else None,
        trim_vocab=trim_vocab,
        allocation=allocation,
        max_bpb_ratio=max_bpb_ratio,
        search_step=search_step,
        vocab_corpus=vocab_corpus,
    )
    run_in("compress")
    from app.job.compress import compress as run

    try:
        v = run(
            base, recipe, _home(registry), name=name, eval_windows=eval_windows, console=console
        )
    except KeyboardInterrupt:
        raise Interrupted("interrupted: nothing was registered") from None
    q = v.quality
    bpb = ", ".join(
        f"{text} {q['bpb'][text]:.3f} (×{ratio:.3f})" for text, ratio in q["bpb_ratio"].items()
    )
    vocab = f", vocabulary {q['vocab']['rows_kept']:,} rows" if q.get("vocab") else ""
    console.print(
        f"[green]registered[/] {v.name}: bits per byte {bpb} of dense; "
        f"sparsity {v.sparsity:.1%}{vocab}, {_size(v.bytes_on_disk)} on disk "
        f"(×{q['bytes_ratio']:.2f}), {q['job_seconds']:.0f} s",
        highlight=False,
    )
    if search := q.get("budget_search"):
        _print_search(search)


def _print_search(search: dict) -> None:
    console.print(
        f"searched for ×{search['max_bpb_ratio']:g} bits per byte ({search['allocation']} "
        f"allocation); chose {search['chosen']:.1%}:",
        highlight=False,
    )
    for p in search["points"]:
        ratios = ", ".join(f"{k} ×{v:.3f}" for k, v in p["bpb_ratio"].items())
        verdict = "within" if p["within"] else "over"
        console.print(f"  {p['sparsity']:6.1%}  {ratios}  {verdict}", highlight=False)


def _floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",")]
    except ValueError:
        raise SparsegateError(f"--schedule takes numbers like 0.3,0.5, not {text!r}") from None


def quality(
    base: Annotated[str, typer.Argument(help="Dense registered model")] = "gemma-3-270m",
    quick: Annotated[bool, typer.Option(help="Wanda rows only (50%, 2:4)")] = False,
    out: Annotated[str, typer.Option(help="JSON results file")] = "quality.json",
    registry: RegistryOpt = None,
) -> None:
    """Compress the base with every recipe of the quality table and print the table."""
    run_in("compress")
    from app.job.bench_quality import run

    try:
        run(base, _home(registry), quick, Path(out), console)
    except KeyboardInterrupt:
        raise Interrupted("interrupted: finished rows stay registered") from None
