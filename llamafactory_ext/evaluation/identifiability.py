"""Can the persona be told from the base model? A classifier (scikit-learn: character n-gram TF-IDF and logistic
regression) trained on the persona's training answers against the base model's answers to the same training
prompts. Its probability on an answer says how much the answer reads like the persona; its cross-validated AUC
says whether it can tell the two apart at all (0.5: it cannot, and its probabilities mean nothing)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

NGRAMS = (1, 4)  # character n-grams inside word boundaries: the voice's words, endings and punctuation
FOLDS = 5
# Weak regularisation: with a few dozen answers a side, the default (C=1) pulls every probability toward 0.5.
C = 10.0
MIN_PER_SIDE = FOLDS  # answers of each side needed to train and cross-validate


class TooFewAnswers(ValueError):
    """Not enough answers on one side to train and cross-validate."""


@dataclass
class PersonaClassifier:
    pipeline: Any
    auc: float  # mean ROC AUC over FOLDS stratified folds
    n_persona: int
    n_base: int

    def probabilities(self, texts: list[str]) -> list[float]:
        """P(persona) of each text."""
        if not texts:
            return []
        return [float(p) for p in self.pipeline.predict_proba(texts)[:, 1]]

    def describe(self) -> dict[str, Any]:
        return {"auc": round(self.auc, 4), "persona_answers": self.n_persona, "base_answers": self.n_base,
                "features": f"character {NGRAMS[0]}-{NGRAMS[1]}-grams within words, TF-IDF",
                "model": f"logistic regression (C={C:g})", "folds": FOLDS}  # fmt: skip


def _pipeline():
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    return make_pipeline(TfidfVectorizer(analyzer="char_wb", ngram_range=NGRAMS, sublinear_tf=True, lowercase=True),
                         LogisticRegression(C=C, max_iter=1000, class_weight="balanced"))  # fmt: skip


def train(persona_answers: list[str], base_answers: list[str]) -> PersonaClassifier:
    """Fit on persona (1) vs base (0) answers; deterministic (fixed folds, lbfgs)."""
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    if min(len(persona_answers), len(base_answers)) < MIN_PER_SIDE:
        raise TooFewAnswers(f"{len(persona_answers)} persona and {len(base_answers)} base answers (at least {MIN_PER_SIDE} "
                            "of each are needed)")  # fmt: skip
    texts = list(persona_answers) + list(base_answers)
    labels = [1] * len(persona_answers) + [0] * len(base_answers)
    folds = StratifiedKFold(n_splits=FOLDS, shuffle=True, random_state=0)
    auc = float(cross_val_score(_pipeline(), texts, labels, cv=folds, scoring="roc_auc").mean())
    return PersonaClassifier(_pipeline().fit(texts, labels), auc, len(persona_answers), len(base_answers))
