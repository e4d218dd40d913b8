"""Benchmarks: the reference SDR implementations against `icm.spectral.sdr` and a direct DFT,
the timing helpers, and a smoke run of `python -m benchmarks.run --quick` (no timing asserts)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

# `benchmarks/` sits beside the package, not inside it: make it importable under any runner.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.references import kernel_on_grid, naive_sdr, padded_sdr, spread_pairs
from benchmarks.report import format_value
from benchmarks.run import main, output_paths, parse_args
from benchmarks.timing import clock_name, interleaved, median, set_clock, spread, time_call
from benchmarks.training import HookTimer, window_mean
from icm.spectral import sdr

LAYERS = [
    # (layer, cause side): transposed stride 2 (eq. 24), stride 1 with a kernel wider than
    # the grid (taps wrap), a strided Conv2d (own grid), an anisotropic transposed stride.
    (lambda: nn.ConvTranspose2d(6, 5, 5, stride=2, padding=2, output_padding=1), 8),
    (lambda: nn.ConvTranspose2d(6, 3, 5, padding=2), 4),
    (lambda: nn.Conv2d(6, 4, 5, stride=2, padding=2), 8),
    (lambda: nn.ConvTranspose2d(6, 4, 3, stride=(2, 3)), 5),
]


@pytest.mark.parametrize("make, side", LAYERS)
def test_references_agree_with_sdr(make, side):
    torch.manual_seed(0)
    layer = make()
    x = torch.randn(7, 6, side, side + 1).relu()
    stride = tuple(layer.stride)
    transposed = isinstance(layer, nn.ConvTranspose2d)
    expected = sdr(layer, x).double()
    padded = padded_sdr(layer.weight, x, stride=stride, transposed=transposed)
    assert padded.shape == expected.shape
    torch.testing.assert_close(padded, expected, rtol=1e-5, atol=1e-6)
    pairs = spread_pairs(*expected.shape, 9)
    naive = naive_sdr(layer.weight, x, pairs, stride=stride, transposed=transposed)
    torch.testing.assert_close(naive, torch.stack([expected[o, i] for o, i in pairs]),
                               rtol=1e-5, atol=1e-6)


def test_references_see_a_dead_channel_as_undefined():
    layer = nn.ConvTranspose2d(3, 2, 3, stride=2)
    x = torch.rand(4, 3, 6, 6)
    x[:, 1] = 0.0
    padded = padded_sdr(layer.weight, x, stride=(2, 2), transposed=True)
    assert torch.isnan(padded[:, 1]).all() and torch.isfinite(padded[:, [0, 2]]).all()


def test_kernel_on_grid_is_the_dtft_sampled_on_the_grid():
    torch.manual_seed(1)
    kernel = torch.randn(5, 4, dtype=torch.float64)
    n1, n2 = 3, 6  # the kernel is taller than the grid: taps wrap
    spectrum = torch.fft.fft2(kernel_on_grid(kernel, (n1, n2)))
    p = torch.arange(5, dtype=torch.float64).view(5, 1)
    q = torch.arange(4, dtype=torch.float64).view(1, 4)
    direct = torch.empty(n1, n2, dtype=torch.complex128)
    for u in range(n1):
        for v in range(n2):
            phase = torch.exp(-2j * math.pi * (u * p / n1 + v * q / n2))
            direct[u, v] = (kernel * phase).sum()
    torch.testing.assert_close(spectrum, direct)


def test_spread_pairs_are_distinct_and_cover_the_ends():
    pairs = spread_pairs(4, 3, 5)
    assert len(pairs) == len(set(pairs)) == 5
    assert pairs[0] == (0, 0) and pairs[-1] == (3, 2)
    assert spread_pairs(2, 2, 10) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    with pytest.raises(ValueError, match="n must be"):
        spread_pairs(2, 2, 0)


def test_interleaved_alternates_arms_after_warmup():
    calls = []
    times = interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
                        repeats=3, warmup=1)
    assert calls == ["a", "b"] * 4
    assert set(times) == {"a", "b"} and all(len(v) == 3 for v in times.values())
    assert all(t >= 0 for v in times.values() for t in v)
    values = iter([3.0, 1.0, 2.0])
    own = interleaved({"x": lambda: next(values)}, repeats=3, warmup=0, self_timed=True)
    assert own["x"] == [3.0, 1.0, 2.0] and median(own["x"]) == 2.0
    assert spread(own["x"]) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="repeats"):
        interleaved({"a": lambda: None}, repeats=0)
    with pytest.raises(ValueError, match="arms"):
        interleaved({}, repeats=1)


def test_cpu_clock_counts_work_not_sleep():
    import time

    try:
        set_clock("cpu")
        assert clock_name() == "cpu"
        assert time_call(lambda: time.sleep(0.2)) < 0.1  # waiting costs no CPU time
        assert time_call(lambda: sum(i * i for i in range(300_000))) > 0
    finally:
        set_clock("wall")
    assert time_call(lambda: time.sleep(0.05)) >= 0.05
    with pytest.raises(ValueError, match="clock"):
        set_clock("sundial")


def test_window_mean_spans_whole_steps():
    starts = [0.0, 1.0, 3.0, 6.0, 10.0]  # steps of 1, 2, 3, 4 s
    assert window_mean(starts, warmup=1, window=2) == pytest.approx((6.0 - 1.0) / 2)
    with pytest.raises(ValueError, match="batch starts"):
        window_mean(starts, warmup=2, window=3)


def test_hook_timer_counts_nested_hooks_once():
    import pytorch_lightning as pl

    class Saver(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.on_save_checkpoint(trainer, pl_module, {})

        def on_save_checkpoint(self, trainer, pl_module, checkpoint):
            checkpoint["x"] = 1

    timer = HookTimer()
    callback = Saver()
    timer.attach("saver", callback)
    callback.on_train_batch_end(None, None, None, None, 0)
    callback.on_save_checkpoint(None, None, {})
    assert [c["hook"] for c in timer.calls] == ["on_train_batch_end", "on_save_checkpoint"]
    assert all(c["callback"] == "saver" and c["seconds"] >= 0 for c in timer.calls)
    assert "on_fit_start" not in callback.__dict__


def test_format_and_arguments():
    assert format_value(0.0123, "%") == "1.23 %"
    assert format_value(312.4, "×") == "312 ×"
    assert format_value(None, "") == "n/a"
    args = parse_args(["--quick", "--only", "6,1"])
    assert args.quick and args.only == [1, 6] and args.threads == 1 and args.clock == "wall"
    assert parse_args(["--clock", "cpu"]).clock == "cpu"
    with pytest.raises(SystemExit):
        parse_args(["--only", "9"])
    json_path, md_path = output_paths("out/bench", quick=False)
    assert (json_path.name, md_path.name) == ("bench.json", "bench.md")


@pytest.mark.slow
def test_quick_run_writes_every_benchmark(tmp_path, capsys):
    report = main(["--quick", "--clock", "cpu", "--out", str(tmp_path / "bench")])
    data = json.loads((tmp_path / "bench.json").read_text())
    text = (tmp_path / "bench.md").read_text()
    printed = capsys.readouterr().out
    assert data == json.loads(json.dumps(report))
    assert [item["number"] for item in data["items"]] == [1, 2, 3, 4, 5, 6, 7]
    for key in ("cpu", "cores", "torch", "torch_threads", "date"):
        assert data["machine"][key] not in (None, "")
    assert data["machine"]["clock"] == "cpu" and "--clock cpu" in data["command"]
    for item in data["items"]:
        assert math.isfinite(item["value"]) and item["value"] > 0, item["key"]
        if item["target"] is None:
            assert item["met"] is None
        else:
            ok = (item["value"] >= item["target"] if item["direction"] == ">="
                  else item["value"] <= item["target"])
            assert item["met"] is ok
        assert f"| {item['number']} | {item['title']} |" in text
        assert item["title"] in printed
        if item["met"] is False:
            assert item.get("profile"), f"{item['key']} missed its target without a profile"
    # Re-rendering the saved JSON gives the same Markdown.
    main(["--render", str(tmp_path / "bench.json"), "--out", str(tmp_path / "again")])
    assert (tmp_path / "again.md").read_text() == text
    items = {item["key"]: item for item in data["items"]}
    # The references agree with sdr, so the speed comparison compares like with like.
    sdr_details = items["sdr_speedup"]["details"]
    assert sdr_details["max_abs_diff_padded"] < 1e-5 and sdr_details["max_abs_diff_naive"] < 1e-5
    assert [r["level"] for r in sdr_details["levels"]] == ["coarse", "intermediate", "fine",
                                                           "image"]
    # The default callbacks and their cadences come from conf/callbacks/default.yaml.
    callbacks = items["callbacks_overhead"]["details"]["callbacks"]
    assert set(callbacks) >= {"checkpoint", "diagnostics", "images"}
    assert all(c["default_cadence"] >= 1 for c in callbacks.values())
    scaling = items["sdr_scaling_peak"]["details"]
    assert [r["channels"] for r in scaling["by_channels"]] == [4, 8]
    assert [r["map"] for r in scaling["by_map"]] == [8, 16]
    assert all(r["peak_rss_mib"] > r["input_mib"] for r in scaling["by_channels"])
