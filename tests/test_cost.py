"""The cost accounting: closed formula, hook-measured counts and PyTorch's own FLOP counter agree."""

import json
from fractions import Fraction

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import xception
from xception.analysis import model_cost, separable_vs_standard
from xception.cli import main


@pytest.fixture(scope="module")
def paper_report():
    return model_cost(xception.create_model("xception"), 299)


@pytest.mark.parametrize("k, m, n, d", [(3, 728, 728, 19), (3, 64, 128, 147), (5, 32, 48, 7), (3, 1536, 2048, 10)])
def test_separable_costs_one_over_n_plus_one_over_k_squared(k, m, n, d):
    sep, std = separable_vs_standard(k, m, n, d)
    assert std.macs == d * d * k * k * m * n
    assert sep.macs == d * d * k * k * m + d * d * m * n
    assert Fraction(sep.macs, std.macs) == Fraction(1, n) + Fraction(1, k * k)
    assert Fraction(sep.params, std.params) == Fraction(1, n) + Fraction(1, k * k)


def test_the_paper_model_needs_about_8_4_g_multiply_adds(paper_report):
    assert 8.3e9 < paper_report.macs < 8.45e9
    assert paper_report.trainable_params == 22_855_952
    assert paper_report.total_params == 22_910_480
    assert len(paper_report.separable) == 34


def test_hook_counts_equal_pytorchs_flop_counter():
    for name, size in (("xception", 299), ("xception41", 160)):
        model = xception.create_model(name).eval()
        report = model_cost(model, size)
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(torch.zeros(1, 3, size, size))
        assert counter.get_total_flops() == 2 * report.macs  # one multiply-add = two FLOPs


def test_each_separable_conv_costs_what_the_formula_says(paper_report):
    by_name = {row.name: row for row in paper_report.layers}
    for row in paper_report.separable:
        depthwise, pointwise = by_name[f"{row.name}.depthwise"], by_name[f"{row.name}.pointwise"]
        assert depthwise.macs + pointwise.macs == row.separable.macs, row.name
        assert depthwise.params + pointwise.params == row.separable.params, row.name
        h, w = row.output_hw
        assert row.standard.macs == h * w * 9 * row.in_channels * row.out_channels


def test_totals_per_flow_add_up(paper_report):
    flows = paper_report.flows
    assert set(flows) == {"entry_flow", "middle_flow", "exit_flow"}
    assert sum(f["separable"].macs for f in flows.values()) == paper_report.separable_total.macs
    assert sum(paper_report.flow_macs.values()) == paper_report.macs
    # Middle flow: 24 separable convs 728→728 at 19×19.
    sep, std = separable_vs_standard(3, 728, 728, 19)
    assert flows["middle_flow"]["separable"].macs == 24 * sep.macs
    assert flows["middle_flow"]["standard"].macs == 24 * std.macs
    ratio = paper_report.separable_total.macs / paper_report.standard_total.macs
    assert 1 / 9 < ratio < 1 / 9 + 1 / 128  # between 1/k² and 1/k² + 1/min(N)
    assert 8 < paper_report.standard_model_macs / paper_report.macs < 8.5


def test_summary_command_prints_json_and_draws_the_chart(tmp_path, capsys):
    chart = tmp_path / "cost.png"
    assert main(["summary", "xception", "--json", "--plot", str(chart)]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["trainable_params"] == 22_855_952
    assert data["macs"] == pytest.approx(8.36e9, rel=0.01)
    assert len(data["separable_convs"]) == 34
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_summary_command_tables_and_options(capsys):
    assert main(["summary", "xception", "--input-size", "28", "-o", "stem=small", "-o", "width=0.25",
                 "-o", "in_chans=1", "-o", "num_classes=10"]) == 0
    out = capsys.readouterr().out
    assert "entry_flow.block2.main.sepconv1.depthwise" in out
    small = xception.create_model("xception", stem="small", width=0.25, in_chans=1, num_classes=10)
    params = sum(p.numel() for p in small.parameters())
    assert f"xception at 28×28: {params:,} trainable parameters" in out


def test_summary_command_reports_bad_input_in_one_line(capsys):
    assert main(["summary", "xceptoin"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("xception summary: error: unknown model 'xceptoin'")
    assert main(["summary", "xception", "--input-size", "32"]) == 1
    assert "needs at least 71×71" in capsys.readouterr().err
