"""The parent's side of decoding (decode.py is the workers'): the pool of worker processes, the
layout cut into chunks for them, and their results merged with few chunks in flight at a time.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from contextlib import contextmanager

from tqdm import tqdm

from tinycnn.data.decode import STOP_SIGNALS, Chunk, ChunkResult, init_worker, run_chunk
from tinycnn.data.layout import Layout
from tinycnn.data.sources import Source
from tinycnn.errors import DataError

CHUNK_IMAGES = 256  # per task: big enough to amortise IPC, small enough to balance 2 workers


@contextmanager
def decode_pool(source: Source, workers: int, size: int) -> Iterator[ProcessPoolExecutor]:
    """Worker processes, started now; pending work is cancelled if the caller fails."""
    # fork: workers need no re-import of the caller's __main__ (which fails for notebooks and
    # stdin scripts under spawn/forkserver) and start in milliseconds; they never touch torch.
    context = multiprocessing.get_context(
        "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    )
    pool = ProcessPoolExecutor(
        workers,
        mp_context=context,
        initializer=init_worker,
        initargs=(source, "train", size, os.getpid()),
    )
    try:
        # Every worker starts now, before the parent grows, with Ctrl-C and SIGTERM blocked
        # until init_worker has set its own handlers: a signal that reaches a worker born with
        # the parent's Python handler would be caught by it and then dropped once the handler
        # is replaced, leaving a worker that outlives a SIGTERM (seen: ~1 group SIGTERM in 10
        # under load hung prepare, a surviving worker waiting on a queue lock a killed one held).
        with signals_blocked():
            for _ in range(workers):
                pool.submit(int)
        yield pool
    finally:
        # Waits for the chunks in flight (terminating a worker could leave the pool's queue
        # locks held, or a result half-written in its pipe, and hang); a parent killed outright
        # takes its workers with it (decode.py).
        pool.shutdown(wait=True, cancel_futures=True)


@contextmanager
def signals_blocked() -> Iterator[None]:
    """SIGINT and SIGTERM held back in this thread (and the processes and threads it starts)
    for the block; delivered after it. A no-op where the platform has no signal masks."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def chunk_layout(
    source: Source, layout: Layout, targets: dict[str, tuple[str, int]], resize: bool
) -> Iterator[Chunk]:
    """Tasks of CHUNK_IMAGES rows; bytes attached when the source can only be streamed.

    targets: split name -> (its .npy file, the byte offset of its first row).
    """

    def empty(name: str, streamed: bool) -> Chunk:
        data = [] if streamed else None
        return Chunk(name, *targets[name], rows=[], files=[], data=data, resize=resize)

    if source.random_access:
        for name, split in layout.splits.items():
            for lo in range(0, len(split.files), CHUNK_IMAGES):
                chunk = empty(name, streamed=False)
                chunk.rows = list(range(lo, min(lo + CHUNK_IMAGES, len(split.files))))
                chunk.files = split.files[lo : lo + CHUNK_IMAGES]
                yield chunk
        return
    where = {
        rel: (name, row)
        for name, split in layout.splits.items()
        for row, rel in enumerate(split.files)
    }
    pending = {name: empty(name, streamed=True) for name in layout.splits}
    found = 0
    for rel, data in source.stream(where):
        found += 1
        name, row = where[rel]
        chunk = pending[name]
        chunk.rows.append(row)
        chunk.files.append(rel)
        chunk.data.append(data)
        if len(chunk.rows) == CHUNK_IMAGES:
            yield chunk
            pending[name] = empty(name, streamed=True)
    yield from (chunk for chunk in pending.values() if chunk.rows)
    if found < len(where):
        raise DataError(
            f"{source.path}: {len(where) - found} listed files were not found on the "
            "second read of the archive (did it change during prepare?)"
        )


def run_chunks(
    pool: ProcessPoolExecutor,
    chunks,
    totals: dict[str, ChunkResult],
    fail_on_bad: Callable[[ChunkResult], None],
    bar: tqdm,
) -> None:
    """Feed chunks with a bounded number in flight (memory stays flat for a streamed archive)."""
    in_flight: set[Future] = set()
    limit = 3 * pool._max_workers

    def collect(block_until: str) -> None:
        nonlocal in_flight
        done, in_flight = wait(in_flight, return_when=block_until)
        for future in done:
            result = future.result()
            fail_on_bad(result)
            _merge(totals[result.split], result)
            bar.update(result.done + len(result.failures))

    for chunk in chunks:
        in_flight.add(pool.submit(run_chunk, chunk))
        if len(in_flight) >= limit:
            collect(FIRST_COMPLETED)
    while in_flight:
        collect(FIRST_COMPLETED)


def _merge(total: ChunkResult, result: ChunkResult) -> None:
    total.done += result.done
    total.failures += result.failures
    total.grayscale += result.grayscale
    total.cmyk += result.cmyk
    total.resized += result.resized
    total.original_sizes += result.original_sizes
    total.digests += result.digests
    for field_name in ("pixel_sum", "pixel_sq_sum"):
        value = getattr(result, field_name)
        if value is not None:
            current = getattr(total, field_name)
            setattr(total, field_name, value if current is None else current + value)
