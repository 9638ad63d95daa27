"""A method's record is what the other surfaces read (issue 28): the recipe stage asks the
quantization record whether it trains, and the report's quantized-edit list is the records' edit
kinds (kept as a torch-free copy for reading JSON; this test keeps the two equal)."""
from __future__ import annotations

from condense.models.edits import EDITS
from condense.quantize import QUANTIZERS
from condense.recipes.stages import STAGES
from condense.report.compare import QUANT_EDITS


def test_the_reports_quantized_edits_are_the_records_edit_kinds():
    kinds = {k for name in QUANTIZERS.names() for k in QUANTIZERS.get(name).edit_kinds}
    assert kinds - {"fold_bn"} == QUANT_EDITS  # BN folding alone is not quantization
    assert all(k in EDITS for k in kinds)  # every kind a record names is replayable


def test_a_quantize_stage_trains_when_its_methods_record_says_so():
    from condense.quantize import resolve_config

    stage = STAGES.get("quantize")
    for name in QUANTIZERS.names():
        cfg = resolve_config({"method": name})[1]
        assert stage.trains_for(cfg) is QUANTIZERS.get(name).trains
    assert [n for n in QUANTIZERS.names() if QUANTIZERS.get(n).trains] == ["qat"]
    assert {QUANTIZERS.get(n).deploys for n in QUANTIZERS.names()} <= {"int8", "int8_dynamic", "packed"}
