"""The cost accounting: closed formula, hook-measured counts and PyTorch's own FLOP counter agree."""

import json
from fractions import Fraction

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

import xception
from xception import cli
from xception.analysis import model_cost, separable_vs_standard
from xception.cli import main
from xception.errors import ConfigError
from xception.layers import SeparableConv2d, StandardConv2d


@pytest.fixture(scope="module")
def paper_report():
    return model_cost(xception.create_model("xception"), 299)


@pytest.fixture(autouse=True)
def summary_only(monkeypatch):
    # The command under test alone, so that this file does not depend on the others being importable.
    monkeypatch.setattr(cli, "COMMANDS", ("summary",))


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


def test_the_report_prints_as_the_readme_shows(paper_report):
    text = paper_report.format(layers=False)
    assert text.startswith("xception at 299×299: 22,855,952 trainable parameters (22,910,480 with BN statistics), "
                           "8.36 G multiply-adds per image\n\nmodule ")
    assert "\nall                     8.357          68.167            7.706  0.113\n" in text
    assert text.endswith("With standard convs in place of the 34 separable ones the model would need 68.8 G "
                         "multiply-adds (8.2× more) and 179,126,216 parameters.")
    assert "entry_flow.block2.main.sepconv1.depthwise" not in text
    with_layers = paper_report.format()
    assert with_layers.endswith(text)
    layer_lines = with_layers.removesuffix(text).splitlines()
    assert layer_lines[0].split() == ["layer", "type", "output", "params", "mult-adds"]
    assert len(layer_lines) == 2 + len(paper_report.layers) + 1  # header, rule, rows, blank line
    # 32 filters of 3×3×3 over a 149×149 output
    assert layer_lines[2].split() == ["entry_flow.block1.conv1", "Conv2d", "32×149×149", "864", f"{149**2 * 864:,}"]


def test_summary_command_prints_the_report_and_takes_model_options(capsys):
    assert main(["summary", "xception", "--input-size", "28", "--set", "model.stem=small",
                 "--set", "model.width=0.25", "--set", "model.in_chans=1", "--set", "model.num_classes=10"]) == 0
    out = capsys.readouterr().out
    small = xception.create_model("xception", stem="small", width=0.25, in_chans=1, num_classes=10)
    assert out == model_cost(small, 28, name="xception").format() + "\n"
    params = sum(p.numel() for p in small.parameters())
    assert f"xception at 28×28: {params:,} trainable parameters" in out
    assert main(["summary", "xception", "--no-layers", "--set", "model.stem=small"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("xception at 16×16: ")  # the small stem's smallest input when no size is given


def test_model_options_are_written_model_key(capsys, monkeypatch):
    monkeypatch.setattr(cli, "COMMANDS", ("summary", "export"))
    for command in (["summary"], ["export", "model.onnx"]):
        args = cli.build_parser().parse_args([*command, "--set", "model.width=0.5", "--set", "model.stem=small",
                                              "--set", "model.activation=null", "--set", "model.residual=false"])
        assert args.options == [("width", 0.5), ("stem", "small"), ("activation", None), ("residual", False)]
    with pytest.raises(SystemExit) as exit_:
        main(["summary", "--set", "width=0.5"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "model options are written model.KEY, as in --set model.width=0.5" in err
    with pytest.raises(SystemExit):
        main(["summary", "--help"])
    assert "--set model.stem=small --set model.width=0.5" in capsys.readouterr().out  # the examples agree


def test_the_former_option_spelling_still_works_with_one_notice(capsys):
    assert main(["summary", "--no-layers", "--input-size", "28", "-o", "stem=small", "--option", "width=0.25"]) == 0
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1
    assert "-o is deprecated" in captured.err and "write --set model.stem=small" in captured.err
    expected = model_cost(xception.create_model("xception", stem="small", width=0.25), 28, name="xception")
    assert captured.out == expected.format(layers=False) + "\n"
    with pytest.raises(SystemExit):
        main(["summary", "--help"])
    assert "--option" not in capsys.readouterr().out  # hidden from help


def test_summary_command_reports_bad_input_in_one_line(capsys):
    assert main(["summary", "xceptoin"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("xception summary: error: unknown model 'xceptoin'")
    assert main(["summary", "xception", "--input-size", "32"]) == 1
    assert "needs at least 71×71" in capsys.readouterr().err
    assert main(["summary", "--set", "model.colour=red"]) == 1
    assert "error: unknown model option(s) ['colour']" in capsys.readouterr().err
    assert main(["summary", "--set", "model.width=wide"]) == 1
    assert capsys.readouterr().err == "xception summary: error: width must be a number, got 'wide'\n"


# -- conv="standard": the network of the §3 comparison, built and counted ------------------------------------

# The paper model's 34 separable convs (SPEC: Fig. 5 at 299×299): (M, N, output side D) per conv.
PAPER_SEPARABLE_CONVS = (
    [(64, 128, 147), (128, 128, 147), (128, 256, 74), (256, 256, 74), (256, 728, 37), (728, 728, 37)]
    + [(728, 728, 19)] * 24
    + [(728, 728, 19), (728, 1024, 19), (1024, 1536, 10), (1536, 2048, 10)]
)


@pytest.fixture(scope="module")
def standard_report():
    return model_cost(xception.create_model("xception", conv="standard"), 299)


def test_the_standard_conv_model_costs_the_closed_formula(paper_report, standard_report):
    assert len(PAPER_SEPARABLE_CONVS) == 34
    k2 = 9
    # Parameters: the paper model's 22,855,952 with k²·M·N in place of k²·M + M·N for each of the 34 convs.
    params = 22_855_952 + sum(k2 * m * n - (k2 * m + m * n) for m, n, _ in PAPER_SEPARABLE_CONVS)
    assert standard_report.trainable_params == params == 179_071_688
    # Multiply-adds: D²·k²·M·N per replaced conv in place of D²·k²·M + D²·M·N.
    macs = paper_report.macs + sum(d * d * (k2 * m * n - k2 * m - m * n) for m, n, d in PAPER_SEPARABLE_CONVS)
    assert standard_report.macs == macs
    # ... and what summary says the all-standard model would need is what that model has. Its 179,126,216
    # "parameters" count BN statistics, as total_params does: 54,528 more than the trainable ones, the same
    # 54,528 the paper model has (the BNs after the convs stay).
    assert standard_report.macs == paper_report.standard_model_macs == 68_818_345_696
    assert standard_report.total_params == paper_report.standard_model_params == 179_126_216
    assert standard_report.total_params - standard_report.trainable_params == 22_910_480 - 22_855_952
    # Turned around: the standard model knows what the separable one costs.
    assert standard_report.separable_model_macs == paper_report.macs
    assert standard_report.separable_model_params == paper_report.total_params


def test_the_standard_conv_model_reports_its_own_comparison(standard_report):
    assert standard_report.conv == "standard"
    assert len(standard_report.separable) == 34  # one row per replaced conv
    assert {row.kind for row in standard_report.layers if ".sepconv" in row.name and "_bn" not in row.name} == {
        "Conv2d"}
    text = standard_report.format(layers=False)
    assert text.startswith("xception at 299×299: 179,071,688 trainable parameters (179,126,216 with BN statistics), "
                           "68.82 G multiply-adds per image")
    assert text.endswith("The model has standard convs in place of 34 separable ones (conv='standard'); with "
                         "depthwise separable convs it would need 8.4 G multiply-adds (8.2× fewer) and "
                         "22,910,480 parameters.")
    data = standard_report.to_dict()
    assert data["conv"] == "standard" and data["standard_model_macs"] == data["macs"]


def test_standard_conv_counts_equal_pytorchs_flop_counter():
    model = xception.create_model("xception", conv="standard", stem="small", width=0.25, in_chans=1, num_classes=10)
    report = model_cost(model.eval(), 32)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, 1, 32, 32))
    assert counter.get_total_flops() == 2 * report.macs


def test_a_standard_conv_pads_and_strides_as_the_separable_conv_it_replaces():
    torch.manual_seed(0)
    for size in (8, 9):
        x = torch.randn(2, 4, size, size)
        for padding, pads in (("tf", (0, 1, 0, 1) if size % 2 == 0 else (1, 1, 1, 1)), ("symmetric", (1, 1, 1, 1))):
            conv = StandardConv2d(4, 6, 3, 2, padding=padding)
            reference = F.conv2d(F.pad(x, pads), conv.conv.weight, stride=2)
            torch.testing.assert_close(conv(x), reference)
            assert conv(x).shape == SeparableConv2d(4, 6, 3, 2, padding=padding)(x).shape
            assert sum(p.numel() for p in conv.parameters()) == 9 * 4 * 6  # k²·M·N, no bias


def test_the_aligned_family_and_dilation_take_standard_convs_too():
    standard = model_cost(xception.create_model("xception41", conv="standard", output_stride=16, width=0.25), 64)
    separable = model_cost(xception.create_model("xception41", output_stride=16, width=0.25), 64)
    assert standard.layers[-1].output_shape == separable.layers[-1].output_shape
    assert standard.macs == separable.standard_model_macs
    # The aligned SepConvs carry a BN between their steps (scale and shift per channel of M); a standard conv
    # has no "between", so those BN parameters are all that the formula's count does not know of.
    inner_bn = sum(2 * row.in_channels for row in separable.separable)
    assert standard.trainable_params == (separable.trainable_params - separable.separable_total.params
                                         + separable.standard_total.params - inner_bn)


@pytest.mark.parametrize("name, size", [("xception", 71), ("xception41", 64)])
def test_pointwise_first_costs_are_counted_where_the_steps_run(name, size):
    # The 1×1 step runs first, at the input's resolution, and the k×k step on the N channels it makes:
    # H·W·M·N + D²·k²·N. The aligned family's strided SepConvs make the two resolutions differ.
    report = model_cost(xception.create_model(name, separable_order="pointwise_first"), size)
    by_name = {row.name: row for row in report.layers}
    for row in report.separable:
        depthwise, pointwise = by_name[f"{row.name}.depthwise"], by_name[f"{row.name}.pointwise"]
        assert depthwise.macs + pointwise.macs == row.separable.macs, row.name
        assert depthwise.params + pointwise.params == row.separable.params == row.in_channels * row.out_channels + (
            9 * row.out_channels), row.name


def test_standard_convs_take_no_activation_or_order(capsys):
    with pytest.raises(ConfigError, match="conv='standard' has no depthwise and pointwise steps"):
        xception.create_model("xception", conv="standard", activation="relu")
    with pytest.raises(ConfigError, match="conv must be one of"):
        xception.create_model("xception", conv="grouped")
    assert main(["summary", "--no-layers", "--set", "model.conv=standard", "--set", "model.stem=small",
                 "--set", "model.width=0.25", "--input-size", "28"]) == 0
    assert "The model has standard convs in place of 34 separable ones" in capsys.readouterr().out
