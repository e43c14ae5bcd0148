"""Property tests of the allocator: random alloc/free sequences never overlap, stay in the
arena, keep the stats consistent, and coalesce back to one extent when all is freed."""

from __future__ import annotations

import itertools
import random
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ainative.mem.allocator import (
    MIN_ALIGN,
    PAGE,
    SMALL_CLASSES,
    SMALL_MAX,
    Allocation,
    Allocator,
    InvalidFree,
    OutOfSpace,
)

CAP = 16 << 20

sizes = st.one_of(st.integers(1, 4096), st.integers(4097, SMALL_MAX),
                  st.integers(SMALL_MAX + 1, 1 << 20), st.integers((1 << 20) + 1, 4 << 20))
ops = st.lists(st.tuples(st.booleans(), sizes, st.integers(0, 10**6)), max_size=120)


def check(a: Allocator, live: dict[int, Allocation]) -> None:
    spans = sorted((x.offset, x.offset + x.size) for x in live.values())
    for (_s1, e1), (s2, _e2) in itertools.pairwise(spans):
        assert e1 <= s2, "overlapping allocations"
    for x in live.values():
        assert 0 <= x.offset and x.offset + x.size <= CAP
        assert x.size >= x.requested
        assert x.offset % MIN_ALIGN == 0
        if x.kind != "small":
            assert x.offset % PAGE == 0 and x.size % PAGE == 0
    # Free extents never overlap live allocations either.
    for off, size in a.free_extents():
        for s, e in spans:
            assert off + size <= s or e <= off
    snap = a.snapshot()
    assert snap["used"] == sum(x.size for x in live.values())
    assert snap["requested"] == sum(x.requested for x in live.values())
    assert snap["blocks_in_use"] == len(live)
    assert snap["free"] == CAP - snap["used"]
    assert snap["peak"] >= snap["used"]
    assert 0.0 <= snap["fragmentation"] <= 1.0


@settings(max_examples=150, deadline=None)
@given(ops)
def test_random_sequences_keep_every_invariant(seq: list[tuple[bool, int, int]]) -> None:
    a = Allocator(CAP)
    live: dict[int, Allocation] = {}
    failures = 0
    for is_alloc, size, pick in seq:
        if is_alloc or not live:
            try:
                x = a.alloc(size)
            except OutOfSpace:
                failures += 1
                continue
            assert x.offset not in live
            live[x.offset] = x
        else:
            off = sorted(live)[pick % len(live)]
            a.free(off)
            del live[off]
        check(a, live)
    assert a.snapshot()["failures"] == failures
    for off in list(live):
        a.free(off)
    assert a.free_extents() == [(0, CAP)]
    snap = a.snapshot()
    assert snap["used"] == 0 and snap["largest_free_extent"] == CAP
    assert snap["fragmentation"] == 0.0 and snap["slabs"] == 0


def test_small_classes_waste_at_most_a_quarter() -> None:
    for n in range(1, SMALL_MAX + 1, 37):
        block = next(c for c in SMALL_CLASSES if c >= n)
        assert block - n < max(MIN_ALIGN, block // 4 + MIN_ALIGN)


def test_large_sizes_are_not_rounded_to_powers_of_two() -> None:
    a = Allocator(64 << 20)
    x = a.alloc((16 << 20) + 1)  # a power-of-two allocator would take 32 MiB
    assert x.size == (16 << 20) + PAGE
    y = a.alloc(40 << 20)  # still fits beside it
    assert y.size == 40 << 20


def test_exhaustion_and_bad_free() -> None:
    a = Allocator(1 << 20)
    a.alloc(900 << 10)
    with pytest.raises(OutOfSpace):
        a.alloc(200 << 10)
    assert a.snapshot()["failures"] == 1
    with pytest.raises(InvalidFree):
        a.free(12345)
    with pytest.raises(ValueError):
        a.alloc(0)


def test_threads_allocating_and_freeing_concurrently() -> None:
    a = Allocator(64 << 20)
    errors: list[BaseException] = []
    owned: list[list[Allocation]] = [[] for _ in range(8)]

    def worker(k: int) -> None:
        rng = random.Random(k)
        try:
            for _ in range(3000):
                if owned[k] and rng.random() < 0.5:
                    a.free(owned[k].pop(rng.randrange(len(owned[k]))).offset)
                else:
                    try:
                        owned[k].append(a.alloc(rng.choice([64, 700, 5000, 70_000, 300_000])))
                    except OutOfSpace:
                        pass
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    live = {x.offset: x for lst in owned for x in lst}
    assert len(live) == sum(len(lst) for lst in owned)  # no offset handed out twice
    check_cap = a.capacity
    spans = sorted((x.offset, x.offset + x.size) for x in live.values())
    assert all(e1 <= s2 for (_, e1), (s2, _) in itertools.pairwise(spans))
    assert all(e <= check_cap for _, e in spans)
    for x in live.values():
        a.free(x.offset)
    assert a.free_extents() == [(0, check_cap)]
