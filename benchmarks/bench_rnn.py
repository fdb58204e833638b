"""rnnkit vs torch.nn on CPU: `python benchmarks/bench_rnn.py [--quick] [--threads 1] [--markdown FILE]`.

The same as `rnnkit bench`; see rnnkit/benchmark.py for the method and benchmarks/RESULTS.md for results.
"""

import sys

from rnnkit.cli import app

if __name__ == "__main__":
    sys.exit(app(["bench", *sys.argv[1:]]))
