"""FAISS indexes of a map: building them from descriptors and setting their search options.

Index kinds (``IndexConfig.kind``), one :meth:`MapDatabase.search` API for all of them:

* ``flat``: exact inner product (``IndexFlatIP``).
* ``hnsw``: ``IndexHNSWFlat`` with the inner-product metric (approximate; CPU only, faiss has no
  GPU HNSW).
* ``ivfpq``: ``IndexIVFPQ`` (inner product, 8-bit codes). Training needs enough vectors: the index
  is trained, on every descriptor in the map, as soon as the map holds ``39 * max(ivf_nlist, 256)``
  entries (:func:`ivfpq_train_size`; 39 points per centroid is faiss's own minimum, 256 the
  centroids of each 8-bit sub-quantizer). Until then the map answers with exact search (a flat
  index), which is also the fastest choice for such small maps. Later additions are encoded with
  the trained codebooks and never retrain them.
"""

import logging

import faiss
import numpy as np

from vpr_ros.config import IndexConfig
from vpr_ros.errors import ConfigError

LOG = logging.getLogger(__name__)

IVF_POINTS_PER_CENTROID = 39
PQ_BITS = 8
INDEX_TYPES = {'flat': ('flat',), 'hnsw': ('hnsw',), 'ivfpq': ('flat', 'ivfpq')}


def ivfpq_train_size(config: IndexConfig) -> int:
    """Return the number of entries at which an ``ivfpq`` map trains its index.

    ``39 * max(ivf_nlist, 2 ** 8)``: faiss's minimum points per centroid for both the coarse
    quantizer (``ivf_nlist`` centroids) and each 8-bit product sub-quantizer (256 centroids).
    """
    return IVF_POINTS_PER_CENTROID * max(config.ivf_nlist, 2 ** PQ_BITS)


def check_index_config(config: IndexConfig, dim: int) -> None:
    """Raise :class:`ConfigError` unless ``config`` is an IndexConfig that fits ``dim``."""
    if not isinstance(config, IndexConfig):
        raise ConfigError(f'index_config must be an IndexConfig, got {type(config).__name__}')
    if config.kind == 'ivfpq' and dim % config.pq_m:
        raise ConfigError(f'IndexConfig.pq_m={config.pq_m} does not divide the descriptor '
                          f'dimension {dim}')


def _new_index(config: IndexConfig, dim: int, kind: str) -> faiss.Index:
    if kind == 'hnsw':
        index = faiss.IndexHNSWFlat(dim, config.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = max(40, 2 * config.hnsw_m)
        return index
    if kind == 'ivfpq':
        index = faiss.index_factory(dim, f'IVF{config.ivf_nlist},PQ{config.pq_m}x{PQ_BITS}',
                                    faiss.METRIC_INNER_PRODUCT)
        # Polysemous codes only serve Hamming pre-filtering; their training is ~10x the rest.
        faiss.downcast_index(index).do_polysemous_training = False
        return index
    return faiss.IndexFlatIP(dim)


def build_index(config: IndexConfig, vectors: np.ndarray) -> faiss.Index:
    """Return a CPU index of ``config.kind`` holding ``vectors`` (flat until IVF-PQ trains)."""
    kind = config.kind
    if kind == 'ivfpq' and len(vectors) < ivfpq_train_size(config):
        kind = 'flat'
    index = _new_index(config, vectors.shape[1], kind)
    if kind == 'ivfpq':
        LOG.info('training IVF-PQ index on %d descriptors', len(vectors))
        index.train(vectors)
    if len(vectors):
        index.add(vectors)
    return index


def index_type(index: faiss.Index) -> str:
    """Return the kind of ``index`` (``flat``, ``hnsw``, ``ivfpq``), else its class name."""
    index = faiss.downcast_index(index)
    for name, cls in (('hnsw', faiss.IndexHNSWFlat), ('ivfpq', faiss.IndexIVFPQ),
                      ('flat', faiss.IndexFlatIP)):
        if isinstance(index, cls):
            return name
    return type(index).__name__


def structure(config: IndexConfig) -> tuple:
    """Return the index-config fields that change the stored index (not search-time knobs)."""
    if config.kind == 'hnsw':
        return ('hnsw', config.hnsw_m)
    if config.kind == 'ivfpq':
        return ('ivfpq', config.ivf_nlist, config.pq_m)
    return ('flat',)


def set_search_params(index: faiss.Index, config: IndexConfig) -> None:
    """Apply the search-time options of ``config`` (efSearch, nprobe) to ``index``."""
    index = faiss.downcast_index(index)
    if isinstance(index, faiss.IndexHNSW):
        index.hnsw.efSearch = config.hnsw_ef_search
    elif isinstance(index, faiss.IndexIVF):
        index.nprobe = min(config.ivf_nprobe, index.nlist)
