"""Random draws that depend on what is drawn for, not on which process draws them or when.

A training sample's augmentation (timm's RandomResizedCrop, flip, RandAugment: python ``random``, numpy and torch)
and a batch's random erasing are drawn from generators seeded by ``sample_seed(run seed, epoch, ...)`` inside
``seeded_rng``: the same draws whichever DataLoader worker (or the main process) handles the sample and whether
the run was resumed part-way into the epoch. A worker's own random streams (seeded once when a persistent worker
starts, and never saved in a checkpoint) then play no part, which is what makes a mid-epoch resume with ``-j N``
bit-identical to an uninterrupted run.
"""
import contextlib
import random

MASK64 = (1 << 64) - 1


def _splitmix64(h: int) -> int:
    # The splitmix64 finaliser: a cheap, well-mixed 64-bit hash (nearby inputs give unrelated seeds).
    h = (h + 0x9E3779B97F4A7C15) & MASK64
    h = ((h ^ (h >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    h = ((h ^ (h >> 27)) * 0x94D049BB133111EB) & MASK64
    return h ^ (h >> 31)


def sample_seed(*parts: int) -> int:
    """A 63-bit seed from integers (run seed, epoch, rank, position...); equal parts give equal seeds on every
    machine and Python (no ``hash()`` salt)."""
    h = 0
    for part in parts:
        h = _splitmix64(h ^ (int(part) & MASK64))
    return h >> 1  # 63 bits: fits torch.Generator.manual_seed (int64) and random.seed; numpy takes % 2**32


@contextlib.contextmanager
def seeded_rng(seed: int, device=None):
    """Inside: python's ``random``, numpy's global generator and torch's CPU generator (and ``device``'s, for a CUDA
    device) seeded with ``seed``; after: each restored to its state before, so the caller's own streams (dropout,
    Mixup, the built-in batch augmentation in the main process) continue as if nothing had been drawn.

    In a DataLoader worker nothing else draws from them, so the states are not saved and restored there (numpy's
    get/set_state alone costs about 0.3 ms, a few % of decoding and augmenting an ImageNet image)."""
    import numpy as np
    import torch
    from torch.utils.data import get_worker_info

    cuda = device is not None and getattr(device, 'type', str(device)).startswith('cuda')
    if get_worker_info() is not None and not cuda:
        random.seed(seed)
        np.random.seed(seed % (2 ** 32))
        torch.default_generator.manual_seed(seed)
        yield
        return
    saved = random.getstate(), np.random.get_state(), torch.get_rng_state()
    saved_cuda = torch.cuda.get_rng_state(device) if cuda else None
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.default_generator.manual_seed(seed)  # CPU only: torch.manual_seed would also reseed every CUDA device
    if cuda:
        with torch.cuda.device(device):
            torch.cuda.manual_seed(seed)
    try:
        yield
    finally:
        random.setstate(saved[0])
        np.random.set_state(saved[1])
        torch.set_rng_state(saved[2])
        if cuda:
            torch.cuda.set_rng_state(saved_cuda, device)
