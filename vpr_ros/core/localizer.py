"""The localization pipeline: describe, shortlist by global search, re-rank, accept or reject."""

from collections import deque
from dataclasses import dataclass, field
import logging
import math
from pathlib import Path
import threading
import time
from typing import Optional, Sequence

import numpy as np
import torch

from vpr_ros.core.calibration import (Calibration, GLOBAL_SIMILARITY_CALIBRATION,
                                      PAIR_SCORE_CALIBRATION)
from vpr_ros.core.config import IndexConfig, LocalizerConfig
from vpr_ros.core.database import MapDatabase, MapEntry
from vpr_ros.core.geometry import Pose
from vpr_ros.core.models.vpr_model import VprModel
from vpr_ros.core.preprocessing import preprocess

LOG = logging.getLogger(__name__)
DEFAULT_MODEL = 'efficientnet_lite0_gem'


@dataclass(frozen=True)
class Candidate:
    """One ranked map candidate for a query."""

    map_id: int
    stamp_ns: int
    global_similarity: float
    pair_score: float
    probability: float
    pose: Optional[Pose]


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
    """

    def __init__(self, model: VprModel, database: MapDatabase,
                 config: LocalizerConfig = LocalizerConfig(),
                 calibration: Optional[Calibration] = None) -> None:
        """Wrap ``model`` and ``database``; the map must have been built by the same model."""
        if database.spec.digest() != model.spec.digest():
            from vpr_ros.core.errors import MapMismatchError
            raise MapMismatchError(
                f'map built by {database.spec.architecture} ({database.spec.digest()}), model is '
                f'{model.spec.architecture} ({model.spec.digest()})')
        self._device = select_device(config.device)
        self._model = model.to(self._device).eval()
        self._database = database
        self._config = config
        self._calibration = calibration
        self._lock = threading.Lock()
        self._model_lock = threading.Lock()
        self._history: deque = deque(maxlen=max(config.temporal_window, 1))

    @property
    def model(self) -> VprModel:
        """Return the descriptor / pair-classifier model."""
        return self._model

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
        """Return the score-to-probability mapping; None means the per-score-kind defaults."""
        return self._calibration

    @property
    def device(self) -> torch.device:
        """Return the inference device."""
        return self._device

    @property
    def can_rerank(self) -> bool:
        """Return True when re-ranking is enabled and both model and map support it."""
        return (self._config.rerank and self._model.spec.has_pair_classifier
                and self._database.has_tokens)

    def update_config(self, config: LocalizerConfig) -> None:
        """Replace thresholds, top-K and other run-time options (the device stays)."""
        with self._lock:
            if config.temporal_window != self._config.temporal_window:
                self._history = deque(maxlen=max(config.temporal_window, 1))
            self._config = config

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
            results.append(self._rank(descriptors[i], query_tokens, int(stamp), describe_ms))
        return results

    def _rank(self, descriptor: np.ndarray, tokens: Optional[np.ndarray], stamp_ns: int,
              describe_ms: float) -> LocalizationResult:
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
        timings['total'] = sum(timings.values())
        accepted, reason = self._decide(candidates[0])
        return LocalizationResult(stamp_ns, candidates, accepted, reason, timings)

    def score_pairs(self, query_tokens: np.ndarray, map_ids: np.ndarray) -> np.ndarray:
        """Return the symmetric pair score of the query against each map entry, in batches."""
        batch = self._config.rerank_batch_size
        query = torch.from_numpy(np.ascontiguousarray(query_tokens)).to(self._device)
        scores = []
        for start in range(0, len(map_ids), batch):
            chunk = self._database.tokens(map_ids[start:start + batch])
            candidates = torch.from_numpy(np.ascontiguousarray(chunk)).to(self._device)
            first = query.unsqueeze(0).expand(len(chunk), -1, -1)
            with self._model_lock, torch.inference_mode(), self._autocast():
                score = self._model.pair_score(first.float(), candidates.float())
            scores.append(score.float().cpu().numpy())
        return np.concatenate(scores).astype(np.float64)

    def _candidates(self, ids: np.ndarray, sims: np.ndarray,
                    pair: np.ndarray) -> tuple[Candidate, ...]:
        reranked = not np.isnan(pair).all()
        score = pair if reranked else sims.astype(np.float64)
        # Stable sort keeps the global order among equal pair scores.
        order = np.argsort(-score, kind='stable')
        probability = self._calibration_for(reranked).probability(score)
        out = []
        for k in order:
            entry = self._database.entry(int(ids[k]))
            out.append(Candidate(int(ids[k]), entry.stamp_ns, float(sims[k]), float(pair[k]),
                                 float(probability[k]), entry.pose))
        return tuple(out)

    def _calibration_for(self, reranked: bool) -> Calibration:
        if self._calibration is not None:
            return self._calibration
        return PAIR_SCORE_CALIBRATION if reranked else GLOBAL_SIMILARITY_CALIBRATION

    def _decide(self, best: Candidate) -> tuple[bool, str]:
        config = self._config
        if best.probability < config.accept_probability:
            return False, 'below threshold'
        if config.temporal_window == 0 or best.pose is None:
            return True, 'accepted'
        with self._lock:
            history = list(self._history)
            self._history.append(best.pose)
        if len(history) < config.temporal_window:
            return False, 'temporal'
        here = np.asarray(best.pose.position)
        near = all(np.linalg.norm(here - np.asarray(p.position)) <= config.temporal_max_distance_m
                   for p in history)
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


def load_model(checkpoint: Optional[str] = None, model: Optional[str] = None) -> VprModel:
    """Load ``checkpoint`` (our safetensors format) or build the registry model ``model``."""
    from vpr_ros.core.models.checkpoint import load_checkpoint
    from vpr_ros.core.models.registry import create_model
    if checkpoint:
        return load_checkpoint(checkpoint)
    return create_model(model or DEFAULT_MODEL)


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
