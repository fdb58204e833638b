"""Keras' ``Embedding(100, 50)`` + ``LSTM(100)`` + ``Dense(2, softmax)`` sentiment classifier, in rnnkit.

Keras::

    model = Sequential([Embedding(100, 50), LSTM(100), Dense(2, activation="softmax")])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])

rnnkit: the same layers, trained with Adam on cross-entropy, over padded variable-length reviews with
their lengths (padding never reaches the LSTM's state). The reviews are generated from a 100-word
vocabulary: sentiment words, negations that flip the next one, and filler; the label depends on the
whole sentence. Real review data comes with the SequenceClassifier task. Run:
``python examples/sentiment_lstm.py``.
"""

import torch
from torch import nn

import rnnkit as rk

VOCAB = 100  # ids: 0 padding, 1-10 positive, 11-20 negative, 21 "not", the rest filler
POSITIVE, NEGATIVE, NOT = range(1, 11), range(11, 21), 21


class SentimentClassifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.embedding = nn.Embedding(VOCAB, 50, padding_idx=0)  # Embedding(100, 50)
        self.lstm = rk.LSTM(50, 100)  # LSTM(100)
        self.dense = nn.Linear(100, 2)  # Dense(2, softmax): the softmax is in the cross-entropy

    def forward(self, tokens, lengths):
        _, (h, _) = self.lstm(self.embedding(tokens), lengths=lengths)
        return self.dense(h[-1])


def reviews(batch, generator, min_len=5, max_len=25):
    lengths = torch.randint(min_len, max_len + 1, (batch,), generator=generator)
    tokens = torch.zeros(batch, max_len, dtype=torch.long)
    labels = torch.zeros(batch, dtype=torch.long)
    for b, n in enumerate(lengths.tolist()):
        words = torch.randint(22, VOCAB, (n,), generator=generator)
        score = 0
        for position in torch.randperm(n, generator=generator)[:3].tolist():
            positive = bool(torch.randint(0, 2, (1,), generator=generator))
            pool = POSITIVE if positive else NEGATIVE
            words[position] = pool[int(torch.randint(0, 10, (1,), generator=generator))]
            negated = position > 0 and bool(torch.rand(1, generator=generator) < 0.3)
            if negated:
                words[position - 1] = NOT
            score += (1 if positive else -1) * (-1 if negated else 1)
        tokens[b, :n] = words
        labels[b] = int(score > 0)
    return tokens, lengths, labels


def main(steps=300, seed=0):
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = SentimentClassifier()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(steps):
        tokens, lengths, labels = reviews(64, generator)
        loss = nn.functional.cross_entropy(model(tokens, lengths), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    tokens, lengths, labels = reviews(2000, generator)
    with torch.no_grad():
        accuracy = (model(tokens, lengths).argmax(1) == labels).float().mean().item()
    majority = max(labels.float().mean().item(), 1 - labels.float().mean().item())
    print(f"Embedding(100, 50) + LSTM(100) + Dense(2): test accuracy {accuracy:.3f} (majority class {majority:.3f})")
    return accuracy, majority


if __name__ == "__main__":
    main()
