"""The quality table's rows are the ones the compress issue asks for (the bench itself is a
benchmark command, run by hand: `sparsegate bench quality`)."""

from app.job.bench_quality import recipes
from app.job.recipe import Recipe


def test_rows_cover_methods_patterns_quantization_recovery_and_control():
    rows = recipes("base", quick=False)
    pruned = {n: r for n, (p, r) in rows.items() if p == "base" and r.prune != "none"}
    for method in ("magnitude", "wanda", "sparsegpt"):
        for shape in ("50", "2of4", "70"):
            name = f"q-{method}-{shape}"
            assert name in pruned and pruned[name].prune == method
            # each pruned row is also quantized, starting from the pruned row itself
            assert rows[f"{name}-w8a8"] == (name, Recipe(quant="w8a8"))
    assert rows["q-wanda-2of4"][1].nm == (2, 4)
    assert rows["q-channels70"][1].structured and rows["q-channels70-w8a8"][0] == "q-channels70"
    for name in ("q-wanda-50-lora", "q-sparsegpt-50-lora"):
        recipe = rows[name][1]
        assert recipe.recover == "lora" and recipe.sparsity == 0.5
    control = rows["q-dense-lora"][1]
    assert control.prune == "none" and control.recover == "lora"
    assert control.steps == rows["q-wanda-50-lora"][1].steps  # the same fine-tuning
    assert rows["q-w8a8"] == ("base", Recipe(quant="w8a8"))
    # Vocabulary trimming: trimmed dense at two sizes, then pruned and quantized under it.
    assert rows["q-trim96k"] == ("base", Recipe(trim_vocab=98304))
    assert rows["q-trim64k"] == ("base", Recipe(trim_vocab=65536))
    assert rows["q-trim96k-w8a8"] == ("q-trim96k", Recipe(quant="w8a8"))
    pruned_trimmed = rows["q-trim96k-sparsegpt-50"][1]
    assert pruned_trimmed.trim_vocab == 98304 and pruned_trimmed.prune == "sparsegpt"
    assert rows["q-trim96k-sparsegpt-50-w8a8"][0] == "q-trim96k-sparsegpt-50"


def test_recovery_rows_compare_lora_and_kd_at_equal_steps_and_text():
    rows = recipes("base", quick=False)
    lora = rows["q-sparsegpt-50-lora"][1]
    kd, kdfeat = rows["q-sparsegpt-50-kd"][1], rows["q-sparsegpt-50-kdfeat"][1]
    # The same calibration windows seen: LoRA one per step, KD `batch` per step.
    assert kd.steps * kd.batch == kdfeat.steps * kdfeat.batch == lora.steps * 1
    assert kd.recover == kdfeat.recover == "kd" and kdfeat.feature_weight > 0 == kd.feature_weight
    assert kd.calibration_samples == lora.calibration_samples and kd.seq_len == lora.seq_len
    assert rows["q-sparsegpt-2of4-kd"][1].nm == (2, 4)
    assert rows["q-channels50-kd"][1].structured and rows["q-channels50-kd"][1].recover == "kd"
