"""The localization pipeline: describe, shortlist by global search, re-rank, accept or reject."""

from collections import deque
from dataclasses import dataclass, field, replace
import logging
import math
from pathlib import Path
import threading
import time
from typing import Optional, Sequence

import numpy as np
import torch

from vpr_ros.config import IndexConfig, LocalizerConfig
from vpr_ros.geometry import Pose
from vpr_ros.localization.verification import count_inliers, NOT_VERIFIED, token_grid
from vpr_ros.map.database import MapDatabase
from vpr_ros.map.entries import MapEntry
from vpr_ros.models.backend import apply_backend
from vpr_ros.models.calibration import Calibration, GLOBAL_SIMILARITY_CALIBRATION
from vpr_ros.models.fusion import ActiveScoring, plan_scoring
from vpr_ros.models.loader import load_model
from vpr_ros.models.preprocessing import preprocess
from vpr_ros.models.vpr_model import VprModel

LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class Candidate:
    """One ranked map candidate for a query.

    ``score`` is what the ranking sorts by: the fused, pair or global score of the localizer's
    ``rerank_fusion`` when re-ranked, else the global similarity. ``inliers`` is the geometric
    verification's inlier count (``verify_top_n`` best candidates), -1 when not verified.
    """

    map_id: int
    stamp_ns: int
    global_similarity: float
    pair_score: float
    probability: float
    pose: Optional[Pose]
    score: float = math.nan
    inliers: int = NOT_VERIFIED


@dataclass(frozen=True)
class LocalizationResult:
    """The ranked candidates for one query image and the accept decision."""

    stamp_ns: int
    candidates: tuple[Candidate, ...]
    accepted: bool
    reason: str
    timings_ms: dict = field(default_factory=dict)

    @property
    def best(self) -> Optional[Candidate]:
        """Return the top-ranked candidate, or None when the map is empty."""
        return self.candidates[0] if self.candidates else None

    @property
    def reranked(self) -> bool:
        """Return True when the order comes from the pair classifier."""
        return bool(self.candidates) and not math.isnan(self.candidates[0].pair_score)


def select_device(name: str) -> torch.device:
    """Resolve ``auto``/``cpu``/``cuda`` to a torch device (``auto`` prefers CUDA)."""
    if name == 'auto':
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    if name == 'cuda' and not torch.cuda.is_available():
        raise RuntimeError('device cuda requested but CUDA is not available')
    return torch.device(name)


class Localizer:
    """Image -> global descriptor -> top-K search -> pair re-ranking -> accepted match.

    Thread-safe: :meth:`localize` and :meth:`add_to_map` may run concurrently, and
    :meth:`update_config` changes thresholds and top-K at run time.

    A re-ranked shortlist is ordered by the ``rerank_fusion`` score; its probability comes from
    the calibration the checkpoint stores for that score (``model.rerank_scoring``), or from
    ``calibration`` when given. Without one that fits, a warning is logged and the probability
    is the classifier's uncalibrated output (:func:`~vpr_ros.models.fusion.plan_scoring`).
    """

    def __init__(self, model: VprModel, database: MapDatabase,
                 config: LocalizerConfig = LocalizerConfig(),
                 calibration: Optional[Calibration] = None) -> None:
        """Wrap ``model`` and ``database``; the map must have been built by the same model."""
        if database.spec.digest() != model.spec.digest():
            from vpr_ros.errors import MapMismatchError
            raise MapMismatchError(
                f'map built by {database.spec.architecture} ({database.spec.digest()}), model is '
                f'{model.spec.architecture} ({model.spec.digest()})')
        self._device = select_device(config.device)
        self._grid = token_grid(model) if model.spec.num_tokens else None
        model = apply_backend(model, config.backend, config.backend_cache_dir or None,
                              config.device, config.precision, accelerate=config.accelerate)
        self._model = model.to(self._device).eval()
        self._database = database
        self._config = config
        self._calibration = calibration
        stored = getattr(self._model, 'rerank_scoring', None)
        self._global_calibration = calibration or getattr(stored, 'global_calibration', None)
        self._global_warned = False
        self._scoring = self._plan_scoring(config)
        self._lock = threading.Lock()
        self._model_lock = threading.Lock()
        self._history: deque = deque(maxlen=max(config.temporal_window, 1))
        self._warn_unverifiable(config)

    @property
    def model(self) -> VprModel:
        """Return the descriptor / pair-classifier model."""
        return self._model

    @property
    def backend(self) -> str:
        """Return the inference backend that runs (``auto`` resolved): torch, onnx, tensorrt."""
        return self._model.backend

    @property
    def database(self) -> MapDatabase:
        """Return the map database queried and extended by this localizer."""
        return self._database

    @property
    def config(self) -> LocalizerConfig:
        """Return the current configuration."""
        return self._config

    @property
    def calibration(self) -> Optional[Calibration]:
        """Return the calibration of re-ranked scores; None means uncalibrated defaults."""
        return self._scoring.calibration

    @property
    def scoring(self) -> ActiveScoring:
        """Return the ranking score and probability used for re-ranked shortlists."""
        return self._scoring

    @property
    def device(self) -> torch.device:
        """Return the inference device."""
        return self._device

    @property
    def can_rerank(self) -> bool:
        """Return True when re-ranking is enabled and both model and map support it."""
        return (self._config.rerank and self._model.spec.has_pair_classifier
                and self._database.has_tokens)

    @property
    def can_verify(self) -> bool:
        """Return True when geometric verification is on and the map stores tokens."""
        return (self._config.verify_top_n > 0 and self._grid is not None
                and self._database.has_tokens)

    def _warn_unverifiable(self, config: LocalizerConfig) -> None:
        """Warn when verification is on but cannot run (every match then fails min_inliers)."""
        if config.verify_top_n > 0 and (self._grid is None or not self._database.has_tokens):
            refused = ', so no match is accepted' if config.min_inliers else ''
            LOG.warning('verify_top_n %d: the map stores no tokens, so no candidate can be '
                        'verified%s', config.verify_top_n, refused)

    def update_config(self, config: LocalizerConfig) -> None:
        """Replace thresholds, top-K, fusion and other run-time options (the device stays)."""
        scoring = self._plan_scoring(config)
        self._warn_unverifiable(config)
        with self._lock:
            if config.temporal_window != self._config.temporal_window:
                self._history = deque(maxlen=max(config.temporal_window, 1))
            self._config = config
            self._scoring = scoring

    def _plan_scoring(self, config: LocalizerConfig) -> ActiveScoring:
        """Resolve fusion, beta and calibration for ``config``; warn when uncalibrated."""
        stored = getattr(self._model, 'rerank_scoring', None)
        scoring = plan_scoring(stored, config.rerank_fusion, config.fusion_beta)
        if self._calibration is not None:
            return replace(scoring, calibration=self._calibration, warning=None)
        if scoring.warning and config.rerank and self._model.spec.has_pair_classifier:
            LOG.warning('%s: %s', self._model.spec.architecture, scoring.warning)
        return scoring

    def reset_temporal(self) -> None:
        """Forget the recent matches used by the temporal-consistency check."""
        with self._lock:
            self._history.clear()

    def describe(self, images: Sequence[np.ndarray]) -> tuple[np.ndarray, Optional[np.ndarray]]:
        """Return global descriptors ``[B, D] float32`` and tokens ``[B, N, C] float16`` or None.

        Images are ``[H, W, 3] uint8 RGB``; they are processed in batches of ``batch_size``.
        """
        globals_, tokens = [], []
        batch = self._config.batch_size
        for start in range(0, len(images), batch):
            g, t = self._describe_batch(images[start:start + batch])
            globals_.append(g)
            tokens.append(t)
        if not globals_:
            return np.zeros((0, self._model.spec.descriptor_dim), np.float32), None
        return (np.concatenate(globals_),
                None if tokens[0] is None else np.concatenate(tokens))

    def _describe_batch(self, images: Sequence[np.ndarray]):
        x = preprocess(images, self._model.spec, device=self._device)
        with self._model_lock, torch.inference_mode(), self._autocast():
            g, t = self._model.describe(x)
        g = torch.nn.functional.normalize(g.float(), dim=-1).cpu().numpy()
        return g, None if t is None else t.to(torch.float16).cpu().numpy()

    def _autocast(self):
        precision = self._config.precision
        enabled = self._device.type == 'cuda' and precision != 'fp32'
        dtype = torch.bfloat16 if precision == 'bf16' else torch.float16
        return torch.autocast(self._device.type, dtype=dtype, enabled=enabled)

    def localize(self, image: np.ndarray, stamp_ns: int = 0) -> LocalizationResult:
        """Localize one ``[H, W, 3] uint8 RGB`` image against the map."""
        return self.localize_batch([image], [stamp_ns])[0]

    def localize_batch(self, images: Sequence[np.ndarray],
                       stamps_ns: Sequence[int]) -> list[LocalizationResult]:
        """Localize several images; descriptors are extracted in batches."""
        start = time.perf_counter()
        descriptors, tokens = self.describe(images)
        describe_ms = (time.perf_counter() - start) * 1e3 / max(len(images), 1)
        results = []
        for i, stamp in enumerate(stamps_ns):
            query_tokens = None if tokens is None else tokens[i]
            results.append(self.rank(descriptors[i], query_tokens, int(stamp), describe_ms))
        return results

    def rank(self, descriptor: np.ndarray, tokens: Optional[np.ndarray], stamp_ns: int,
             describe_ms: float = 0.0) -> LocalizationResult:
        """Localize an already described image: search, re-rank and decide.

        ``descriptor`` is one ``[D]`` row and ``tokens`` one ``[N, C]`` entry of
        :meth:`describe` (None skips re-ranking); ``describe_ms`` is reported as its timing.
        """
        config = self._config
        timings = {'describe': describe_ms}
        t0 = time.perf_counter()
        sims, ids = self._database.search(descriptor[None], config.top_k)
        keep = ids[0] >= 0
        sims, ids = sims[0][keep], ids[0][keep]
        timings['search'] = (time.perf_counter() - t0) * 1e3
        if ids.size == 0:
            timings['total'] = sum(timings.values())
            return LocalizationResult(stamp_ns, (), False, 'empty map', timings)
        t0 = time.perf_counter()
        pair = np.full(ids.shape, np.nan)
        if self.can_rerank and tokens is not None:
            pair = self.score_pairs(tokens, ids)
        timings['rerank'] = (time.perf_counter() - t0) * 1e3
        candidates = self._candidates(ids, sims, pair)
        if config.verify_top_n > 0:
            t0 = time.perf_counter()
            if tokens is not None and self.can_verify:
                candidates = self.verify(tokens, candidates, config)
            timings['verify'] = (time.perf_counter() - t0) * 1e3
        timings['total'] = sum(timings.values())
        accepted, reason = self._decide(candidates[0], config)
        return LocalizationResult(stamp_ns, candidates, accepted, reason, timings)

    def score_pairs(self, query_tokens: np.ndarray, map_ids: np.ndarray) -> np.ndarray:
        """Return the symmetric pair score of the query against each map entry, in batches."""
        batch = self._config.rerank_batch_size
        query = torch.from_numpy(np.ascontiguousarray(query_tokens)).to(self._device)
        scores = []
        for start in range(0, len(map_ids), batch):
            chunk = self._database.tokens(map_ids[start:start + batch])
            candidates = torch.from_numpy(np.ascontiguousarray(chunk)).to(self._device)
            with self._model_lock, torch.inference_mode(), self._autocast():
                score = self._model.score_candidates(query.float(), candidates.float())
            scores.append(score.float().cpu().numpy())
        return np.concatenate(scores).astype(np.float64)

    def verify(self, query_tokens: np.ndarray, candidates: Sequence[Candidate],
               config: Optional[LocalizerConfig] = None) -> tuple[Candidate, ...]:
        """Return ``candidates`` with the inlier counts of the first ``verify_top_n`` set.

        The order is kept. Geometric verification (:mod:`vpr_ros.localization.verification`) of the
        query tokens ``[N, C]`` against the map tokens of each candidate.
        """
        config = config or self._config
        count = min(config.verify_top_n, len(candidates))
        if count == 0 or self._grid is None:
            return tuple(candidates)
        ids = np.array([c.map_id for c in candidates[:count]], np.int64)
        inliers = count_inliers(query_tokens, self._database.tokens(ids), self._grid,
                                config.verify_model, config.verify_threshold)
        verified = [replace(c, inliers=int(n)) for c, n in zip(candidates, inliers)]
        return tuple(verified) + tuple(candidates[count:])

    def _candidates(self, ids: np.ndarray, sims: np.ndarray,
                    pair: np.ndarray) -> tuple[Candidate, ...]:
        score, probability = self._scores(sims.astype(np.float64), pair)
        # Stable sort keeps the global order (FAISS returns it) among equal scores.
        order = np.argsort(-score, kind='stable')
        out = []
        for k in order:
            entry = self._database.entry(int(ids[k]))
            out.append(Candidate(int(ids[k]), entry.stamp_ns, float(sims[k]), float(pair[k]),
                                 float(probability[k]), entry.pose, float(score[k])))
        return tuple(out)

    def _scores(self, sims: np.ndarray, pair: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Return the ranking score and probability of each candidate."""
        if np.isnan(pair).all():
            return sims, self._global_probability(sims)
        scoring = self._scoring
        score = scoring.score(pair, sims)
        return score, scoring.probability(pair, sims, score)

    def _global_probability(self, sims: np.ndarray) -> np.ndarray:
        """Return P(same place) of global similarities (not re-ranked shortlists)."""
        calibration = self._global_calibration
        if calibration is None:
            if not self._global_warned:
                self._global_warned = True
                LOG.warning('%s: no calibration of the global similarity in the checkpoint; '
                            'probabilities of matches that are not re-ranked use a generic '
                            'default (%s)', self._model.spec.architecture,
                            GLOBAL_SIMILARITY_CALIBRATION)
            calibration = GLOBAL_SIMILARITY_CALIBRATION
        return calibration.probability(sims)

    def _decide(self, best: Candidate,
                config: Optional[LocalizerConfig] = None) -> tuple[bool, str]:
        """Accept ``best`` when its probability reaches the threshold and recent matches agree.

        With ``verify_top_n`` > 0 it also needs ``min_inliers`` geometric inliers (a candidate
        that could not be verified counts as none), else the reason is ``few inliers``.

        With ``temporal_window`` N > 0 the best candidates of the last N queries that passed
        the threshold must all agree with this one: within ``temporal_max_distance_m`` when
        both map places have a pose, else with map ids at most ``temporal_max_id_gap`` apart.
        """
        config = config or self._config
        if best.probability < config.accept_probability:
            return False, 'below threshold'
        if config.verify_top_n > 0 and max(best.inliers, 0) < config.min_inliers:
            return False, 'few inliers'
        if config.temporal_window == 0:
            return True, 'accepted'
        with self._lock:
            history = list(self._history)
            self._history.append(best)
        if len(history) < config.temporal_window:
            return False, 'temporal'
        near = all(places_agree(best, earlier, config) for earlier in history)
        return (True, 'accepted') if near else (False, 'temporal')

    def add_to_map(self, image: np.ndarray, stamp_ns: int, pose: Optional[Pose],
                   source: str = '', slam_node_id: Optional[int] = None,
                   gps: Optional[tuple[float, float]] = None) -> int:
        """Describe ``image`` and append it to the map; returns the new map id."""
        descriptors, tokens = self.describe([image])
        entry = MapEntry(id=-1, stamp_ns=int(stamp_ns), pose=pose, gps=gps, source=source,
                         slam_node_id=slam_node_id)
        keep_tokens = tokens if self._database.has_tokens else None
        return self._database.add(descriptors, [entry], keep_tokens)[0]


def places_agree(first: Candidate, second: Candidate, config: LocalizerConfig) -> bool:
    """Return True when two matched map places are consistent for the temporal check.

    Places with poses agree within ``temporal_max_distance_m``; otherwise their map ids, which
    follow the recording order of the map, must be at most ``temporal_max_id_gap`` apart
    (neighbouring places of one recorded trajectory).
    """
    if first.pose is not None and second.pose is not None:
        distance = np.linalg.norm(np.subtract(first.pose.position, second.pose.position))
        return bool(distance <= config.temporal_max_distance_m)
    return abs(first.map_id - second.map_id) <= config.temporal_max_id_gap


def load_localizer(map_path: Optional[str], checkpoint: Optional[str] = None,
                   model: Optional[str] = None, config: LocalizerConfig = LocalizerConfig(),
                   index_config: IndexConfig = IndexConfig()) -> Localizer:
    """Build the model and open the map at ``map_path`` (an empty map when it does not exist)."""
    vpr_model = load_model(checkpoint, model)
    if map_path and Path(map_path).exists():
        database = MapDatabase.load(map_path, expected_spec=vpr_model.spec)
    else:
        database = MapDatabase(vpr_model.spec, index_config)
    LOG.info('localizer: model %s, map %s with %d places', vpr_model.spec.architecture,
             map_path, len(database))
    return Localizer(vpr_model, database, config)
