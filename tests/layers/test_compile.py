"""torch.compile over a model that holds rnnkit layers: the layer runs as it is (a graph break), the rest compiles."""

import pytest
import torch
from torch import nn

import rnnkit as rk
from tests.helpers import assert_close

dynamo_testing = pytest.importorskip("torch._dynamo.testing")


class Tagger(nn.Module):
    """Embedding -> a two-layer bidirectional rnnkit layer over a padded batch -> a linear head: compiled code on
    both sides of the layer."""

    def __init__(self, cell, backend, **options):
        super().__init__()
        self.embedding = nn.Embedding(20, 6)
        self.rnn = rk.RNN(6, 5, 2, cell=cell, bidirectional=True, backend=backend, **options)
        self.head = nn.Linear(10, 3)

    def forward(self, ids, lengths):
        outputs, _ = self.rnn(self.embedding(ids), lengths=lengths)
        return torch.tanh(self.head(outputs)).sum(1)


@pytest.mark.parametrize(("cell", "options"), [("gru", {}), ("lstm", {"layer_norm": True}),
                                               ("rnn", {"nonlinearity": "relu"})])
@pytest.mark.parametrize("backend", ["auto", "fused", "reference"])
def test_a_compiled_model_gives_what_it_gives_eagerly(cell, options, backend):
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = Tagger(cell, backend, **options).double()
    ids = torch.randint(0, 20, (4, 7))
    lengths = torch.tensor([7, 3, 5, 1])

    eager = model(ids, lengths)
    eager.pow(2).sum().backward()
    eager_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()

    counter = dynamo_testing.CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(model, backend=counter)(ids, lengths)
    compiled.pow(2).sum().backward()
    # dynamo compiled the code around the layer (before and after its graph break), not nothing
    assert counter.frame_count >= 2
    assert_close(compiled, eager)
    for p, expected in zip(model.parameters(), eager_grads):
        assert_close(p.grad, expected)


def test_an_encoder_decoder_that_runs_its_decoder_cell_over_the_whole_target_compiles():
    """Seq2Seq without input feeding runs its decoder cell through the engine directly (run_cell), not through a
    layer: the graph break is at the engine's entry, which every caller passes."""
    from rnnkit.seq2seq import Seq2SeqNetwork

    torch._dynamo.reset()
    torch.manual_seed(0)
    model = Seq2SeqNetwork(12, 12, embedding_dim=8, hidden_size=6, input_feeding=False).double()
    source, lengths = torch.randint(4, 12, (3, 5)), torch.tensor([5, 3, 4])
    target_in = torch.randint(4, 12, (3, 6))
    eager, eager_weights = model(source, lengths, target_in)
    eager.exp().sum().backward()
    eager_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()

    counter = dynamo_testing.CompileCounterWithBackend("aot_eager")
    compiled, weights = torch.compile(model, backend=counter)(source, lengths, target_in)
    compiled.exp().sum().backward()
    assert counter.frame_count >= 2
    assert_close(compiled, eager)
    assert_close(weights, eager_weights)
    for p, expected in zip(model.parameters(), eager_grads):
        assert_close(p.grad, expected)
