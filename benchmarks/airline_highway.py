"""Would a linear autoregressive "highway" beside the recurrent network (LSTNet, Lai et al. 2018) pass the
airline bar with settings chosen honestly? Scored like airline_selection.py: rolling-origin validation
inside the 120 training months (fit on 72 / 84 / 96, forecast 24, 3 seeds), held-out test MAPE beside it.

The highway adds, for each forecast step, a learned linear map of the last `highway` values of the
(stationary, standardised) window to the network's output.

    python benchmarks/airline_highway.py 0 2 & python benchmarks/airline_highway.py 1 2   # ~5 min on 2 cores
"""

import json
import logging
import sys
import warnings

import numpy as np
import torch
from torch import nn

import rnnkit as rk
import rnnkit.tasks.forecaster as forecaster
from rnnkit.data.series import load_airline


class HighwayNetwork(forecaster.ForecastNetwork):
    highway = 0  # set per setting below

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.linear = nn.Linear(self.highway, self.horizon) if self.highway else None

    def forward(self, x):
        out = super().forward(x)
        if self.linear is None:
            return out
        tail = x[:, -self.highway:, : self.features].transpose(1, 2)  # [B, F, highway]
        return out + self.linear(tail).transpose(1, 2)


def mape(values, end, options):
    scores = []
    for seed in range(3):
        model = rk.Forecaster(season=12, seed=seed, **options).fit(values[:end], progress=False)
        scores.append(model.evaluate(values[:end], values[end:end + 24])["model"]["MAPE"])
    return scores


def main(part: int = 0, parts: int = 1) -> None:
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    torch.set_num_threads(1)
    forecaster.ForecastNetwork = HighwayNetwork
    values = load_airline()[1].astype(float)
    grid = [(h, w, k, wd) for h in (0, 12, 24) for w in (12, 24) for k in (12, 24) for wd in (0.5, 2) if h <= w]
    for index, (highway, window, horizon, weight_decay) in enumerate(grid):
        if index % parts != part:
            continue
        HighwayNetwork.highway = highway
        options = {"window": window, "horizon": horizon, "weight_decay": weight_decay}
        validation = [float(np.mean(mape(values, end, options))) for end in (72, 84, 96)]
        test = mape(values, 120, options)
        print(json.dumps({"highway": highway, **options}), f"validation {np.mean(validation):.2f}",
              f"({' / '.join(f'{v:.1f}' for v in validation)})", f"test {np.mean(test):.2f}",
              f"({' / '.join(f'{v:.1f}' for v in test)})", flush=True)


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:3]))
