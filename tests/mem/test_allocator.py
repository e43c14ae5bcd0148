"""Property tests of the allocator: random alloc/free sequences never overlap, stay in the
arena, keep the stats consistent, and coalesce back to one extent when all is freed; the
same for the per-size free lists in front of it."""

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
from ainative.mem.freelists import FreeLists, reserved_size

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


# --- the free lists in front of the allocator (freelists.py) ---

fl_ops = st.lists(st.tuples(st.sampled_from(["take", "give", "trim"]), sizes,
                            st.integers(0, 10**6)), max_size=150)


@settings(max_examples=150, deadline=None)
@given(fl_ops)
def test_free_lists_never_hand_out_a_block_twice(seq: list[tuple[str, int, int]]) -> None:
    """Blocks taken through the free lists never overlap each other, are never on a
    stack while taken, fit their request, and the allocator's books always equal the
    taken blocks plus the stacked ones; trimming after giving all back leaves one
    extent, as the allocator alone would."""
    a = Allocator(CAP)
    fl = FreeLists(a)
    taken: dict[int, tuple[int, int]] = {}  # offset -> (requested, reserved)
    for op, size, pick in seq:
        if op == "take" or (op == "give" and not taken):
            try:
                off, reserved = fl.take(size)
            except OutOfSpace:
                fl.trim()  # what the pool does before it gives up
                continue
            assert off not in taken
            assert reserved == reserved_size(size) >= size
            taken[off] = (size, reserved)
        elif op == "give":
            off = sorted(taken)[pick % len(taken)]
            fl.give(off, taken.pop(off)[1])
        else:
            for off, size_back in fl.trim():
                assert off not in taken and size_back > 0
        spans = sorted((off, off + r) for off, (_, r) in taken.items())
        assert all(e1 <= s2 for (_, e1), (s2, _) in itertools.pairwise(spans))
        assert all(0 <= s and e <= CAP for s, e in spans)
        stacked = [off for stack in fl.stacks.values() for off in stack]
        assert len(stacked) == len(set(stacked)) and not set(stacked) & set(taken)
        blocks, cached = fl.cached()
        snap = a.snapshot()
        assert snap["blocks_in_use"] == len(taken) + blocks
        assert snap["used"] == sum(r for _, r in taken.values()) + cached
    for off, (_, reserved) in list(taken.items()):
        fl.give(off, reserved)
    fl.trim()
    assert a.free_extents() == [(0, CAP)] and a.snapshot()["slabs"] == 0
    assert fl.cached() == (0, 0)


def test_free_list_classes_match_the_allocator() -> None:
    fl = FreeLists(Allocator(CAP))
    for n in (1, 63, 64, 65, 1000, 4096, 5000, SMALL_MAX - 1, SMALL_MAX):
        stack = fl.by_granule[(n + 63) >> 6]
        assert stack is fl.stacks[reserved_size(n)]
        assert reserved_size(n) == next(c for c in SMALL_CLASSES if c >= n)
    assert reserved_size(SMALL_MAX + 1) == SMALL_MAX + PAGE
    assert reserved_size((1 << 20) + 1) == (1 << 20) + PAGE
