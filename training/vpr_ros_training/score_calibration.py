"""Choosing the fusion beta and fitting the probability calibration of a trained pair classifier.

Everything here reads :class:`ShortlistScores`: each query of a route against its global top-K
map frames, with the pair score, the global similarity and whether the frame is within the
correctness radius. Two settings per route:

- *revisit*: the whole map; the query's place is in it (the two-traversal case).
- *novel*: every map frame within ``novel_exclusion_m`` of the query is removed first, so the
  query's place is not in the map and its best match is always wrong (the first visit of a
  place during SLAM, where loop closure must stay silent).

:func:`choose_beta` picks ``beta`` of the fused score ``pair + beta * similarity`` by the mean
Recall@1 of the validation routes (revisit setting). :func:`fit_route_calibration` fits a
logistic (Platt) calibration of the best candidate's fused score on the validation routes, with
the revisit and the novel setting in equal numbers: P(the best match is right) for a query that is
as likely a revisit as a new place. Logistic and not isotonic: two parameters fit well on a few
hundred decisions, the mapping is monotone by construction and extrapolates beyond the fitted
range, where isotonic regression is flat and its steps follow the noise of small validation
sets. :func:`assess_scoring` measures all of it on test routes that chose nothing.
"""

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch

from vpr_ros.evaluation.metrics import precision_at_probability, recall_at_n, reliability
from vpr_ros.models.calibration import Calibration, fit_calibration
from vpr_ros.models.fusion import fuse_scores, RerankScoring
from vpr_ros_training.route_features import RouteFeatures, tokens_of

BETAS = (0.0, 2.0, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0)


@dataclass(frozen=True)
class ShortlistScores:
    """One route's queries against their global shortlists (``[Q, K]`` arrays).

    ``positives`` lists, per query, every map frame within the radius that the map holds (empty
    in the novel setting); ``correct`` marks the shortlisted ones. Shortlist slots beyond the
    frames the map holds have similarity ``-inf`` and never rank above a real candidate.
    """

    seed: int
    shortlist: np.ndarray
    pair: np.ndarray
    similarity: np.ndarray
    correct: np.ndarray
    positives: tuple

    def score(self, fusion: str, beta: float) -> np.ndarray:
        """Return the ``fusion`` score ``[Q, K]`` (``-inf`` in empty slots)."""
        valid = np.isfinite(self.similarity)
        fused = fuse_scores(self.pair, np.where(valid, self.similarity, 0.0), fusion, beta)
        return np.where(valid, fused, -np.inf)

    def ranking(self, fusion: str, beta: float) -> np.ndarray:
        """Return the shortlist re-ordered by the ``fusion`` score, ``[Q, K]`` map indices."""
        order = np.argsort(-self.score(fusion, beta), axis=1, kind='stable')
        return np.take_along_axis(self.shortlist, order, axis=1)

    def recalls(self, fusion: str, beta: float, ns: Sequence[int] = (1, 5, 10)) -> dict:
        """Return Recall@N (percent) of the re-ordered shortlist over all queries."""
        return recall_at_n(self.ranking(fusion, beta), list(self.positives), ns)

    def best(self, fusion: str, beta: float) -> tuple[np.ndarray, np.ndarray]:
        """Return the best candidate's score ``[Q]`` and whether it is correct ``[Q]``."""
        score = self.score(fusion, beta)
        top = np.argmax(score, axis=1)
        rows = np.arange(len(top))
        return score[rows, top], self.correct[rows, top]


@torch.no_grad()
def score_shortlists(model: torch.nn.Module, route: RouteFeatures, top_k: int, radius_m: float,
                     novel_exclusion_m: Optional[float] = None,
                     batch: int = 200) -> ShortlistScores:
    """Score every query of ``route`` against its global top-``top_k`` map frames.

    With ``novel_exclusion_m`` the map frames within that distance of the query are left out
    of its shortlist (the novel setting). Tokens are rounded to float16, as the map stores them.
    """
    model.eval()
    similarity = route.similarity.copy()
    if novel_exclusion_m is not None:
        similarity[route.distance <= novel_exclusion_m] = -np.inf
    shortlist = np.argsort(-similarity, axis=1, kind='stable')[:, :top_k]
    query_tokens = _tokens(model, route.query_features)
    map_tokens = _tokens(model, route.map_features)
    queries = np.repeat(np.arange(len(shortlist)), shortlist.shape[1])
    frames = shortlist.reshape(-1)
    pair = np.concatenate([model.pair_score(query_tokens[queries[s:s + batch]],
                                            map_tokens[frames[s:s + batch]]).numpy()
                           for s in range(0, len(queries), batch)]).reshape(shortlist.shape)
    distance = np.take_along_axis(route.distance, shortlist, axis=1)
    in_map = np.isfinite(similarity) & (route.distance <= radius_m)
    return ShortlistScores(route.seed, shortlist, pair.astype(np.float64),
                           np.take_along_axis(similarity, shortlist, axis=1),
                           distance <= radius_m,
                           tuple(np.flatnonzero(row) for row in in_map))


def _tokens(model: torch.nn.Module, cached: torch.Tensor, batch: int = 64) -> torch.Tensor:
    """Return float16-rounded pair-classifier tokens of cached token inputs."""
    return torch.cat([tokens_of(model, cached[s:s + batch]).half().float()
                      for s in range(0, len(cached), batch)])


def mean_recalls(routes: Sequence[ShortlistScores], fusion: str, beta: float) -> dict:
    """Return Recall@1/5/10 averaged over ``routes``."""
    tables = [route.recalls(fusion, beta) for route in routes]
    return {n: float(np.mean([table[n] for table in tables])) for n in tables[0]}


def choose_beta(routes: Sequence[ShortlistScores],
                betas: Sequence[float] = BETAS) -> tuple[float, dict]:
    """Return the beta with the best mean Recall@1 (then Recall@5) and the table of all betas.

    Ties go to the smaller beta: the pair classifier then decides more of the ranking.
    """
    table = {float(beta): mean_recalls(routes, 'fused', beta) for beta in betas}
    best = max(table, key=lambda beta: (round(table[beta][1], 6), round(table[beta][5], 6),
                                        -beta))
    return best, table


def calibration_samples(revisit: Sequence[ShortlistScores], novel: Sequence[ShortlistScores],
                        beta: float) -> tuple[np.ndarray, np.ndarray]:
    """Return the best candidates' fused scores and labels of both settings, concatenated."""
    pairs = [route.best('fused', beta) for route in list(revisit) + list(novel)]
    return (np.concatenate([score for score, _ in pairs]),
            np.concatenate([label for _, label in pairs]).astype(np.float64))


def fit_route_calibration(revisit: Sequence[ShortlistScores], novel: Sequence[ShortlistScores],
                          beta: float, fitted_on: str) -> RerankScoring:
    """Fit the logistic calibration of the fused score with ``beta`` (see the module doc)."""
    scores, labels = calibration_samples(revisit, novel, beta)
    calibration = fit_calibration(scores, labels)
    if calibration.scale <= 0.0:
        calibration = Calibration(scale=1e-6, offset=calibration.offset)
    return RerankScoring('fused', float(beta), calibration, fitted_on)


def assess_scoring(revisit: Sequence[ShortlistScores], novel: Sequence[ShortlistScores],
                   scoring: RerankScoring, threshold: float = 0.9) -> dict:
    """Return recalls of every ranking and the reliability of the calibrated best match."""
    result = {name: mean_recalls(revisit, fusion, scoring.beta)
              for name, fusion in (('global', 'global'), ('pair', 'pair'), ('fused', 'fused'))}
    for name, routes in (('revisit', revisit), ('novel', novel),
                         ('mixed', list(revisit) + list(novel))):
        scores, labels = calibration_samples(routes, [], scoring.beta)
        probability = scoring.calibration.probability(scores)
        result[f'{name}_reliability'] = reliability(probability, labels.astype(bool))
        result[f'{name}_at_{threshold:g}'] = precision_at_probability(
            probability, labels.astype(bool), threshold)
    return result
