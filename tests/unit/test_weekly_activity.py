"""The weekly summary's activity adapter names the generation kind's collection and counter without
importing it (the notifications function stays light): these tests hold the names equal."""

from __future__ import annotations

from shared.adapters.firestore.activity import GENERATION_JOBS, IMAGES_COUNTER
from shared.batch.kind import Totals
from shared.generation.jobs import GENERATION


def test_the_adapter_reads_the_generation_kinds_collection() -> None:
    assert GENERATION.collection == GENERATION_JOBS


def test_the_counter_it_sums_is_the_one_the_kind_counts_images_in() -> None:
    assert GENERATION.images(Totals({IMAGES_COUNTER: 7, "succeeded_items": 3})) == 7
