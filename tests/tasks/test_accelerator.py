"""Where the ready tasks train: the CPU by default, a CUDA GPU with ``accelerator="gpu"`` (or ``"auto"`` where
there is one); predictions, evaluation and model files stay on the CPU either way."""

import numpy as np
import pytest
import torch

import rnnkit as rk
from rnnkit.data.series import load_airline
from tests.helpers import cuda


@pytest.mark.parametrize("options, says", [
    ({"accelerator": "tpu"}, "accelerator must be one of 'cpu', 'gpu', 'auto'; got 'tpu'"),
    ({"accelerator": "auto", "devices": 2, "strategy": "ddp_spawn"}, "devices=2 trains data-parallel in CPU processes"),
])
def test_fit_names_an_accelerator_it_cannot_use(options, says):
    _, passengers = load_airline()
    with pytest.raises(ValueError, match=says.replace("(", r"\(").replace(")", r"\)")):
        rk.Forecaster(season=12, seed=0).fit(passengers[:-24], epochs=1, progress=False, **options)


def test_fit_on_a_gpu_where_there_is_none_says_so():
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    _, passengers = load_airline()
    with pytest.raises(ValueError, match="accelerator='gpu', but no CUDA GPU is available here"):
        rk.Forecaster(season=12, seed=0).fit(passengers[:-24], epochs=1, progress=False, accelerator="gpu")


def test_auto_trains_on_the_cpu_where_there_is_no_gpu_exactly_as_the_default():
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device: auto takes it")
    _, passengers = load_airline()
    history = passengers[:-24]
    default = rk.Forecaster(season=12, seed=0).fit(history, epochs=3, progress=False)
    auto = rk.Forecaster(season=12, seed=0).fit(history, epochs=3, progress=False, accelerator="auto")
    np.testing.assert_array_equal(auto.predict(history).mean, default.predict(history).mean)


def _trains_and_comes_back(accelerator, device_type):
    """fit_module on ``accelerator`` fits a linear map, then hands the module back on the CPU."""
    from rnnkit.tasks.trainer import fit_module
    from rnnkit.training.modules import RegressionModule

    torch.manual_seed(0)
    network = torch.nn.Sequential(torch.nn.Linear(3, 1))
    x = torch.randn(256, 3)
    data = torch.utils.data.TensorDataset(x, x @ torch.tensor([[1.0], [-2.0], [0.5]]))
    module = RegressionModule(network, 0.05)
    trainer = fit_module(module, torch.utils.data.DataLoader(data, batch_size=32), None, 30, progress=False,
                         accelerator=accelerator)
    assert trainer.strategy.root_device.type == device_type
    assert all(p.device.type == "cpu" for p in network.parameters())
    torch.testing.assert_close(network[0].weight, torch.tensor([[1.0, -2.0, 0.5]]), atol=0.05, rtol=0)


def test_training_on_the_cpu_fits_and_stays_there():
    """What the GPU test below checks, on the CPU: the check itself is right."""
    _trains_and_comes_back("cpu", "cpu")


@cuda
def test_gpu_training_comes_back_to_the_cpu_trained():
    _trains_and_comes_back("gpu", "cuda")
    _, passengers = load_airline()
    history, actual = passengers[:-24], passengers[-24:]
    model = rk.Forecaster(season=12, seed=0).fit(history, epochs=60, progress=False, accelerator="gpu")
    report = model.evaluate(history, actual)
    assert report["model"]["MAPE"] < report["seasonal_naive"]["MAPE"]
