"""Re-ranking score fusion: one ranking score from the pair score and the global similarity.

Three fusions rank a re-ranked shortlist:

- ``fused``: ``pair_score + beta * global_similarity``. The pair score (both input orders of the
  pair classifier summed) spans tens of logit units, the cosine similarity of the global
  descriptors about 0.1 within a shortlist, so ``beta`` is large (tens) for a classifier that
  should only break the global ranking's near-ties, and 0 for one that should rank alone.
- ``pair``: the pair score alone, as the official Pair-VPR re-ranking does (``beta`` is unused).
- ``global``: the global similarity alone; the pair classifier still runs and its score is
  reported, but it changes neither the order nor the probability.

A checkpoint that ships a pair classifier carries a :class:`RerankScoring` in its metadata
(``rerank_scoring``): the fusion and ``beta`` chosen on validation data, and the calibration of
that exact score to P(same place). The calibration is only valid for the score it was fitted on;
:meth:`RerankScoring.applies_to` tells whether a run-time fusion and beta are that score.
"""

from dataclasses import dataclass
import json
import math
from typing import Optional

import numpy as np

from vpr_ros.config import BETA_FROM_CHECKPOINT, FUSIONS
from vpr_ros.errors import ConfigError
from vpr_ros.models.calibration import (Calibration, GLOBAL_SIMILARITY_CALIBRATION,
                                        PAIR_SCORE_CALIBRATION)


def fuse_scores(pair_score: np.ndarray, global_similarity: np.ndarray, fusion: str,
                beta: float) -> np.ndarray:
    """Return the ranking score of each candidate (float64, the shape of the inputs).

    Args:
        pair_score: the pair classifier's score (both input orders summed).
        global_similarity: the inner product of the L2-normalised global descriptors.
        fusion: one of :data:`FUSIONS`.
        beta: weight of the global similarity in the ``fused`` score (>= 0).
    """
    pair = np.asarray(pair_score, dtype=np.float64)
    similarity = np.asarray(global_similarity, dtype=np.float64)
    if fusion == 'fused':
        return pair + float(beta) * similarity
    if fusion == 'pair':
        return pair.copy()
    if fusion == 'global':
        return similarity.copy()
    raise ConfigError(f'unknown re-ranking fusion {fusion!r}; valid: {", ".join(FUSIONS)}')


@dataclass(frozen=True)
class RerankScoring:
    """The ranking score a checkpoint was tuned for and its calibration to P(same place).

    Attributes:
        fusion: one of :data:`FUSIONS`.
        beta: weight of the global similarity in the ``fused`` score (0 otherwise).
        calibration: maps :meth:`score` to P(same place); None when never fitted.
        fitted_on: where ``beta`` and ``calibration`` were chosen (free text, for reports).
        global_calibration: maps the global similarity alone to P(same place), for a
            localizer that does not re-rank; None when never fitted.
    """

    fusion: str = 'pair'
    beta: float = 0.0
    calibration: Optional[Calibration] = None
    fitted_on: str = ''
    global_calibration: Optional[Calibration] = None

    def __post_init__(self) -> None:
        """Check the fusion name and that beta and the calibration are finite and monotone."""
        if self.fusion not in FUSIONS:
            raise ConfigError(f'rerank_scoring.fusion {self.fusion!r} is not one of {FUSIONS}')
        if not (math.isfinite(self.beta) and self.beta >= 0.0):
            raise ConfigError(f'rerank_scoring.beta must be a finite number >= 0, '
                              f'got {self.beta!r}')
        for name in ('calibration', 'global_calibration'):
            calibration = getattr(self, name)
            if calibration is not None and not (
                    math.isfinite(calibration.scale) and math.isfinite(calibration.offset)
                    and calibration.scale > 0.0):
                raise ConfigError(f'rerank_scoring.{name} must have a finite scale > 0 (a '
                                  f'probability that rises with the score), got {calibration}')

    def score(self, pair_score: np.ndarray, global_similarity: np.ndarray) -> np.ndarray:
        """Return the ranking score this scoring describes (see :func:`fuse_scores`)."""
        return fuse_scores(pair_score, global_similarity, self.fusion, self.beta)

    def applies_to(self, fusion: str, beta: float) -> bool:
        """Return True when ``fusion`` and ``beta`` give the score this scoring describes."""
        if fusion != self.fusion:
            return False
        return fusion != 'fused' or math.isclose(beta, self.beta, rel_tol=1e-9, abs_tol=1e-12)

    def to_json(self) -> str:
        """Serialise to the JSON stored in checkpoint metadata."""
        data = {'fusion': self.fusion, 'beta': self.beta,
                'calibration': _calibration_json(self.calibration), 'fitted_on': self.fitted_on}
        if self.global_calibration is not None:
            data['global_calibration'] = _calibration_json(self.global_calibration)
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> 'RerankScoring':
        """Parse :meth:`to_json` output; a missing or malformed field raises ConfigError."""
        try:
            data = json.loads(text)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f'rerank_scoring is not valid JSON: {exc}') from exc
        if not isinstance(data, dict):
            raise ConfigError('rerank_scoring must be a JSON object')
        unknown = sorted(set(data) - {'fusion', 'beta', 'calibration', 'fitted_on',
                                      'global_calibration'})
        if unknown:
            raise ConfigError(f'rerank_scoring has unknown fields {unknown}')
        try:
            return cls(fusion=str(data['fusion']), beta=_number(data['beta'], 'beta'),
                       calibration=_calibration(data.get('calibration')),
                       fitted_on=str(data.get('fitted_on', '')),
                       global_calibration=_calibration(data.get('global_calibration')))
        except KeyError as exc:
            raise ConfigError(f'rerank_scoring lacks the field {exc}') from exc


def _number(value: object, name: str) -> float:
    """Return ``value`` as a float, refusing booleans, strings and other non-numbers."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f'rerank_scoring.{name} must be a number, got {value!r}')
    return float(value)


def _calibration_json(calibration: Optional[Calibration]) -> Optional[dict]:
    """Return the JSON form of a logistic calibration (None stays None)."""
    if calibration is None:
        return None
    return {'kind': 'logistic', 'scale': calibration.scale, 'offset': calibration.offset}


def _calibration(data: object) -> Optional[Calibration]:
    """Return the logistic calibration described by ``data`` (None stays None)."""
    if data is None:
        return None
    if not isinstance(data, dict) or data.get('kind') != 'logistic':
        raise ConfigError('rerank_scoring.calibration must be null or {"kind": "logistic", '
                          f'"scale": ..., "offset": ...}}, got {data!r}')
    return Calibration(scale=_number(data.get('scale'), 'calibration.scale'),
                       offset=_number(data.get('offset'), 'calibration.offset'))


@dataclass(frozen=True)
class ActiveScoring:
    """The ranking score and probability a localizer uses for re-ranked shortlists.

    Attributes:
        fusion: one of :data:`FUSIONS`.
        beta: weight of the global similarity (``fused`` only).
        calibration: maps the ranking score to P(same place); None when no calibration fits
            this score, and then :meth:`probability` falls back to the uncalibrated output of
            the component that ranks (the classifier's ``sigmoid(pair_score / 2)``, or the
            default global-similarity mapping).
        warning: why the probability is uncalibrated or ``beta`` was not stored (None if fine).
    """

    fusion: str
    beta: float
    calibration: Optional[Calibration]
    warning: Optional[str] = None

    @property
    def calibrated(self) -> bool:
        """Return True when probabilities come from a calibration fitted for this score."""
        return self.calibration is not None

    def score(self, pair_score: np.ndarray, global_similarity: np.ndarray) -> np.ndarray:
        """Return the ranking score of each candidate (see :func:`fuse_scores`)."""
        return fuse_scores(pair_score, global_similarity, self.fusion, self.beta)

    def probability(self, pair_score: np.ndarray, global_similarity: np.ndarray,
                    score: np.ndarray) -> np.ndarray:
        """Return P(same place) of each candidate from its ranking ``score`` (or a fallback)."""
        if self.calibration is not None:
            return self.calibration.probability(score)
        if self.fusion == 'global':
            return GLOBAL_SIMILARITY_CALIBRATION.probability(global_similarity)
        return PAIR_SCORE_CALIBRATION.probability(pair_score)


def plan_scoring(stored: Optional[RerankScoring], fusion: str, beta: float) -> ActiveScoring:
    """Combine a checkpoint's stored scoring with the run-time ``fusion`` and ``beta``.

    ``beta`` = :data:`BETA_FROM_CHECKPOINT` takes the stored beta (0 when nothing is stored).
    The stored calibration is used only when the resulting score is the one it was fitted on;
    otherwise :attr:`ActiveScoring.warning` says why the probability is uncalibrated.
    """
    warnings = []
    if beta == BETA_FROM_CHECKPOINT:
        beta = stored.beta if stored is not None else 0.0
        if stored is None and fusion == 'fused':
            warnings.append('the checkpoint stores no fusion beta: the fused score is the pair '
                            'score alone (beta 0)')
    if stored is not None and stored.calibration is not None and stored.applies_to(fusion, beta):
        return ActiveScoring(fusion, beta, stored.calibration, None)
    if stored is None or stored.calibration is None:
        reason = 'the checkpoint stores no calibration'
    else:
        reason = (f'the stored calibration was fitted for {_describe(stored.fusion, stored.beta)},'
                  f' not {_describe(fusion, beta)}')
    fallback = ('the default global-similarity mapping' if fusion == 'global'
                else "the pair classifier's uncalibrated sigmoid(pair_score / 2)")
    warnings.append(f'{reason}; match probabilities are {fallback}')
    return ActiveScoring(fusion, beta, None, '; '.join(warnings))


def _describe(fusion: str, beta: float) -> str:
    """Return ``'fused (beta 80)'`` or the fusion name."""
    return f'fused (beta {beta:g})' if fusion == 'fused' else fusion
