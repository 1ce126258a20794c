"""Torch datasets and the global-batch sampler shared by both stages.

Every sample is keyed by ``(place, seed)``: the sampler decides which places form each *global*
batch and gives every sample its own seed (from the run seed, the epoch and the sample's position
in the epoch). Image choice, augmentation and the stage-one mask depend only on that seed, so a
run on ``W`` ranks with ``P`` samples each sees exactly the batches of one process with ``W * P``
samples, whatever the number of DataLoader workers.
"""

from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from vpr_ros_training.augmentation import PairAugmentation, PlaceAugmentation
from vpr_ros_training.places import PlaceSet, PlaceUnion

SampleKey = tuple[int, int]


def sample_seed(seed: int, epoch: int, position: int) -> int:
    """Return the seed of the sample at ``position`` of ``epoch``."""
    return int(np.random.SeedSequence([seed, epoch, position]).generate_state(1)[0])


def random_mask(num_patches: int, mask_ratio: float, rng: np.random.Generator) -> torch.Tensor:
    """Return a ``[num_patches] bool`` mask with exactly ``int(mask_ratio * num_patches)`` set."""
    mask = torch.zeros(num_patches, dtype=torch.bool)
    mask[torch.from_numpy(rng.permutation(num_patches)[:int(mask_ratio * num_patches)])] = True
    return mask


class GlobalBatchSampler(Sampler):
    """Yield this rank's slice of each global batch of places, as ``(place, seed)`` keys."""

    def __init__(self, num_places: int, per_rank: int, world_size: int = 1, rank: int = 0,
                 shuffle: bool = True, seed: int = 0) -> None:
        """Batch ``num_places`` places into global batches of ``per_rank * world_size``."""
        if num_places < per_rank * world_size:
            raise ValueError(f'{num_places} places cannot fill one global batch of '
                             f'{per_rank} x {world_size}')
        self.num_places, self.per_rank = num_places, per_rank
        self.world_size, self.rank = world_size, rank
        self.shuffle, self.seed = shuffle, seed
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """Select the epoch (its shuffle) and skip its first ``skip`` batches (resume)."""
        self.epoch, self.skip = epoch, skip

    @property
    def global_batch(self) -> int:
        """Return the number of samples per global batch."""
        return self.per_rank * self.world_size

    def __len__(self) -> int:
        """Return the number of (full) batches per epoch; the remainder is dropped."""
        return self.num_places // self.global_batch

    def order(self) -> np.ndarray:
        """Return the place order of the current epoch."""
        if not self.shuffle:
            return np.arange(self.num_places)
        return np.random.default_rng([self.seed, self.epoch]).permutation(self.num_places)

    def __iter__(self) -> Iterator[list[SampleKey]]:
        """Yield the keys of this rank's samples, batch by batch."""
        order = self.order()
        for batch in range(self.skip, len(self)):
            start = batch * self.global_batch + self.rank * self.per_rank
            yield [(int(order[p]), sample_seed(self.seed, self.epoch, p))
                   for p in range(start, start + self.per_rank)]


class PairDataset(Dataset):
    """Stage-one samples: two augmented images of one place and the mask of the first."""

    def __init__(self, places: PlaceSet, augmentation: PairAugmentation, num_patches: int,
                 mask_ratio: float) -> None:
        """Draw pairs from ``places``; masks cover ``mask_ratio`` of ``num_patches``."""
        self.places, self.augmentation = places, augmentation
        self.num_patches, self.mask_ratio = num_patches, mask_ratio

    def __len__(self) -> int:
        """Return the number of places."""
        return len(self.places)

    def __getitem__(self, key: SampleKey) -> tuple[torch.Tensor, ...]:
        """Return ``(first [3,H,W], second [3,H,W], mask [N] bool, source index)``."""
        place, seed = key
        rng = np.random.default_rng(seed)
        first, second = self.places.sample_pair(place, rng)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            first_t, second_t = self.augmentation(first, second)
        mask = random_mask(self.num_patches, self.mask_ratio, rng)
        source = self.places.source_of(place) if isinstance(self.places, PlaceUnion) else 0
        return first_t, second_t, mask, torch.tensor(source)


class PlaceDataset(Dataset):
    """Stage-two samples: ``K`` augmented images of one place and their place label."""

    def __init__(self, places: PlaceSet, augmentation: PlaceAugmentation,
                 images_per_place: int) -> None:
        """Draw ``images_per_place`` images per place."""
        self.places, self.augmentation = places, augmentation
        self.images_per_place = images_per_place

    def __len__(self) -> int:
        """Return the number of places."""
        return len(self.places)

    def __getitem__(self, key: SampleKey) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(images [K, 3, H, W], labels [K])``."""
        place, seed = key
        rng = np.random.default_rng(seed)
        images = self.places.sample_images(place, self.images_per_place, rng)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            tensors = torch.stack([self.augmentation(image) for image in images])
        return tensors, torch.full((self.images_per_place,), place, dtype=torch.long)


def make_loader(dataset: Dataset, sampler: GlobalBatchSampler, num_workers: int,
                pin_memory: bool = False) -> DataLoader:
    """Return a DataLoader driven by ``sampler`` (one list of keys per batch)."""
    return DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers,
                      pin_memory=pin_memory, persistent_workers=False)
