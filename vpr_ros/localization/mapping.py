"""Building a map database from a frame sequence."""

import logging
from typing import Iterable

from vpr_ros.data.frame import Frame
from vpr_ros.data.frame_source import batched
from vpr_ros.localization.localizer import Localizer
from vpr_ros.map.entries import MapEntry

LOG = logging.getLogger(__name__)


def add_frames(localizer: Localizer, frames: Iterable[Frame]) -> list[int]:
    """Describe ``frames`` in batches and append them to the localizer's map; return their ids."""
    database = localizer.database
    ids: list[int] = []
    for batch in batched(frames, localizer.config.batch_size):
        descriptors, tokens = localizer.describe([f.image for f in batch])
        entries = [MapEntry(id=-1, stamp_ns=f.stamp_ns, pose=f.pose, gps=None, source=f.source,
                            slam_node_id=None) for f in batch]
        ids += database.add(descriptors, entries, tokens if database.has_tokens else None)
    LOG.info('added %d frames; map now holds %d places', len(ids), len(database))
    return ids
