"""benchmarks/fwd_trace.py: parsing the FP8 forward's clock stamps and the softmax overlap,
on synthetic traces whose answers are known."""

from __future__ import annotations

import importlib.util
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _trace_module():
    spec = importlib.util.spec_from_file_location("fwd_trace", ROOT / "benchmarks" / "fwd_trace.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _lines(offset: int, visits: int = 6, period: int = 1000, softmax: int = 400) -> list[str]:
    """Two warpgroups of CTA 0, item 0: same phases, warpgroup 1 `offset` cycles later."""
    out = []
    for wg, shift in ((0, 0), (1, offset)):
        for v in range(visits):
            t = 10_000 + v * period + shift
            stamps = [t, t + 50, t + 250, t + 350, t + 350 + softmax, t + 800]
            out.append(f"gna_trace 0 {wg} 0 {v} " + " ".join(map(str, stamps)))
    return out


def test_phases_period_and_overlap_in_phase():
    m = _trace_module()
    result = m.summary(m.parse(_lines(offset=0)))
    assert result["visits"] == 12
    assert result["phases"] == {
        "turn": 50, "issue": 200, "S wait": 100, "softmax": 400, "P V + rescale": 50,
    }  # fmt: skip
    assert result["period"] == 1000
    assert result["softmax_overlap"] == 1.0


def test_overlap_half_and_none():
    m = _trace_module()
    assert m.summary(m.parse(_lines(offset=200)))["softmax_overlap"] == 0.5
    assert m.summary(m.parse(_lines(offset=500)))["softmax_overlap"] == 0.0


def test_keeps_the_last_launch_and_ignores_other_output():
    m = _trace_module()
    trace = m.parse(["done", *_lines(offset=0), "noise gna_trace", *_lines(offset=500)])
    assert m.summary(trace)["softmax_overlap"] == 0.0


def test_main_without_stamps_says_how_to_get_them(capsys, tmp_path):
    m = _trace_module()
    empty = tmp_path / "out.txt"
    empty.write_text("done\n")
    assert m.main([str(empty)]) == 1
    assert "GNA_SM90_FWD_TRACE" in capsys.readouterr().out


def test_item_boundaries():
    """Two items of CTA 0 warpgroup 0: the first waits 300 cycles for Q, the second 100; each
    epilogue takes 200 cycles after its last visit; the second item's first GEMM turn comes 7250
    cycles after the first item's last visit."""
    m = _trace_module()
    lines = []
    for item, start in ((0, 10_000), (1, 20_000)):
        for v in range(3):
            t = start + 1000 * v
            stamps = [t, t + 50, t + 250, t + 350, t + 750, t + 800]
            lines.append(f"gna_trace 0 0 {item} {v} " + " ".join(map(str, stamps)))
    lines.append("gna_item 0 0 0 9600 9900 13000")  # the last visit ends at 12800
    lines.append("gna_item 0 0 1 19900 20000 23000")
    costs = m.item_costs(m.parse(lines), m.parse_items(lines))
    assert costs["first Q wait"] == 300 and costs["Q wait"] == 100
    assert costs["epilogue"] == 200
    assert costs["boundary"] == 20_050 - 12_800
