"""A whole split read with bounded memory: in chunks, or as a training loop's batches on the device.

In-memory splits (CIFAR, Tiny-ImageNet) are read as views of their tensor, or staged whole on the device as
uint8, as every training loop here always did. File-backed splits (the ImageNet family, `FileImageDataset`)
are never held whole: each chunk or batch is decoded from its files, the next one in a background thread
while the caller works on this one, so at most two are in memory whatever the split's size. Both give the
same pixels in the same order, so a run's result does not depend on which kind of split it read.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Iterable, Iterator, Optional, Tuple, Union

import torch

from .base import ImageDataset

#: images per chunk when a whole split is streamed (224-px uint8: 1024 images are 154 MB)
STREAM_CHUNK = 1024


def prefetch(ds: ImageDataset, batches: Iterable[torch.Tensor]) -> Iterator[torch.Tensor]:
    """ds.get(idx) for each index batch in order; a file-backed split reads batch i+1 in a thread meanwhile
    (JPEG decoding is C code that releases the GIL). In memory it just indexes."""
    if ds.in_memory:
        for idx in batches:
            yield ds.get(idx)
        return
    it = iter(batches)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="ddkit-prefetch") as pool:
        first = next(it, None)
        pending = pool.submit(ds.get, first) if first is not None else None
        while pending is not None:
            nxt = next(it, None)
            x = pending.result()
            pending = pool.submit(ds.get, nxt) if nxt is not None else None
            yield x


def iter_chunks(ds: ImageDataset, chunk: int = STREAM_CHUNK) -> Iterator[Tuple[int, torch.Tensor]]:
    """(start, uint8 images start..start+len-1) over the whole split in order, `chunk` images at a time."""
    spans = [(a, min(a + chunk, len(ds))) for a in range(0, len(ds), max(1, chunk))]
    if ds.in_memory:
        for a, b in spans:
            yield a, ds.read(a, b)
        return
    for (a, _), x in zip(spans, prefetch(ds, (torch.arange(a, b) for a, b in spans))):
        yield a, x


class DeviceBatches:
    """A split's uint8 pixels for a training loop on `device`.

    In memory: the whole split is copied to the device once (uint8, 4× cheaper than float) and batches are
    gathered there. File-backed: nothing is staged; each batch is decoded on the host and copied over.
    """

    def __init__(self, ds: ImageDataset, device: Union[str, torch.device]) -> None:
        self.ds, self.device = ds, torch.device(device)
        self.images: Optional[torch.Tensor] = ds.images.to(self.device) if ds.in_memory else None

    def epoch(self, order: torch.Tensor, batch_size: int, steps: int) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        """(indices, uint8 images on the device) of the `steps` batches order[i·bs:(i+1)·bs]."""
        parts = order[:steps * batch_size].split(batch_size)
        if self.images is not None:
            for idx in parts:
                yield idx, self.images[idx]
            return
        for idx, x in zip(parts, prefetch(self.ds, order.cpu()[:steps * batch_size].split(batch_size))):
            yield idx, x.to(self.device, non_blocking=True)

    def chunks(self, chunk: int = STREAM_CHUNK) -> Iterator[Tuple[int, torch.Tensor]]:
        """(start, uint8 images on the device) over the whole split in order."""
        if self.images is not None:
            for a in range(0, len(self.ds), chunk):
                yield a, self.images[a:a + chunk]
            return
        for a, x in iter_chunks(self.ds, chunk):
            yield a, x.to(self.device, non_blocking=True)
