"""Would a linear autoregressive "highway" beside the recurrent network (LSTNet, Lai et al. 2018) pass the
airline bar with settings chosen honestly? Scored like airline_selection.py: rolling-origin validation
inside the 120 training months (fit on 72 / 84 / 96, forecast 24, 3 seeds), held-out test MAPE beside it.

The highway adds, for each forecast step, a learned linear map of the last `highway` values of the
(stationary, standardised) window to the network's output.

    python benchmarks/airline_highway.py 0 2 & python benchmarks/airline_highway.py 1 2   # ~5 min on 2 cores
"""

import sys

from airline_selection import quiet, report  # this script's folder is on sys.path when run as above
from torch import nn

from rnnkit.data.series import load_airline
from rnnkit.tasks import forecaster


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


def main(part: int = 0, parts: int = 1) -> None:
    quiet()
    forecaster.ForecastNetwork = HighwayNetwork  # what rk.Forecaster builds
    values = load_airline()[1].astype(float)
    grid = [(h, w, k, wd) for h in (0, 12, 24) for w in (12, 24) for k in (12, 24) for wd in (0.5, 2) if h <= w]
    for index, (highway, window, horizon, weight_decay) in enumerate(grid):
        if index % parts == part:
            HighwayNetwork.highway = highway
            options = {"window": window, "horizon": horizon, "weight_decay": weight_decay}
            report(values, options, {"highway": highway, **options})


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:3]))
