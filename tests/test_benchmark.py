"""The benchmark compares like with like: every contender computes what the torch.nn baseline computes."""

import pytest
import torch

from rnnkit import benchmark


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_contenders_compute_the_same_function_as_torch_nn(cell):
    layers = benchmark.contenders(cell, 3, 4, reference=True, device="cpu")
    assert set(layers) == {"torch.nn", "control", "fused", "native", "auto", "reference"}
    x = torch.randn(2, 5, 3)
    expected = layers["torch.nn"](x)[0]
    for name, layer in layers.items():
        torch.testing.assert_close(layer(x)[0], expected, atol=1e-5, rtol=1e-5, msg=lambda m: f"{name}: {m}")


def test_layer_norm_lstm_contenders_share_weights():
    layers = benchmark.contenders("ln-lstm", 3, 4, reference=True, device="cpu")
    x = torch.randn(2, 5, 3)
    torch.testing.assert_close(layers["fused"](x)[0], layers["reference"](x)[0], atol=1e-5, rtol=1e-5)


def test_markdown_report_lists_every_ratio():
    rows = [benchmark.Row("gru", (1, 2, 3, 4), "train", 10.0, {"control": 1.0, "fused": 0.5})]
    text = benchmark.markdown(rows, [], [], "header")
    assert "| gru | 1,2,3,4 | train | 10.00 | 1.00x | 0.50x |" in text
