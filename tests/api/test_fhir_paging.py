"""Paging and sorting of FHIR searches: `next` links, `_count` and `_sort`, and
pages that stay consistent while the store changes, served by a real API
process over a real redis-server seeded as in tests/api/fhir_seed.py.
"""

from __future__ import annotations

import math

import orjson
import pytest

from tests.api.fhir_seed import B_START, HR, LOINC, Served, served

__all__ = ["served"]  # a fixture, used by name


@pytest.mark.parametrize("count", [1, 7, 50])
@pytest.mark.parametrize("sort", ["-date", "date"])
@pytest.mark.parametrize(
    "filters",
    [{}, {"patient": "P-A"}, {"code": HR}, {"patient": "P-B", "date": "ge2026-11-28T00:10Z"}],
)
def test_paging_follows_next_links_until_the_total_is_read(
    served: Served, count: int, sort: str, filters: dict[str, str]
) -> None:
    ids, pages = served.every_page("/fhir/Observation", _count=count, _sort=sort, **filters)
    everything = served.ids("/fhir/Observation", _count=1000, _sort=sort, **filters)
    assert ids == everything, "pages together are the one-page result, in order"
    assert len(set(ids)) == len(ids)
    assert {page["total"] for page in pages} == {len(ids)}
    assert all(len(page.get("entry", [])) == count for page in pages[:-1])
    assert 1 <= len(pages[-1].get("entry", [])) <= count
    assert len(pages) == math.ceil(len(ids) / count)
    for page in pages[1:]:
        [self_link] = [link for link in page["link"] if link["relation"] == "self"]
        assert self_link["url"].startswith(served.base + "/fhir/Observation?")


def test_default_page_is_50_newest_first(served: Served) -> None:
    body = served.bundle("/fhir/Observation")
    assert len(body["entry"]) == 50
    assert [e["resource"]["id"] for e in body["entry"]] == served.seed.expected("Observation")[:50]
    assert [link["relation"] for link in body["link"]] == ["self", "next"]


def test_sort_by_date_ascending(served: Served) -> None:
    assert served.ids("/fhir/Observation", _sort="date", patient="P-A", _count=1000) == (
        served.seed.expected("Observation", lambda s: s.patient == "P-A", newest_first=False)
    )


def test_count_zero_gives_the_total_only(served: Served) -> None:
    body = served.bundle("/fhir/Observation", _count=0, patient="P-A")
    assert body["total"] == served.seed.count("Observation", lambda s: s.patient == "P-A") == 121
    assert "entry" not in body
    assert [link["relation"] for link in body["link"]] == ["self"]
    assert served.bundle("/fhir/Observation", _count=0, code=HR)["total"] == 50


def test_pages_neither_repeat_nor_skip_when_resources_arrive_between_them(
    served: Served,
) -> None:
    seed = served.seed
    expected = seed.expected("Observation", lambda s: s.patient == "P-B")
    first = served.bundle("/fhir/Observation", patient="P-B", _count=10)
    assert [e["resource"]["id"] for e in first["entry"]] == expected[:10]
    boundary = next(s for s in seed.by_type["Observation"] if s.id == expected[9])
    template = seed.by_type["Observation"][-1].resource
    # Newer than everything; and at the first page's last time, ordered before it.
    late = [
        ({**template, "id": "zz-newest"}, B_START + 10_000),
        ({**template, "id": "zz-tied"}, boundary.time),
    ]
    for resource, stamp in late:
        seed.client.set(seed.keys.fhir("Observation", resource["id"]), orjson.dumps(resource))
        for patient in (None, "P-B"):
            seed.client.zadd(seed.keys.fhir_index("Observation", patient), {resource["id"]: stamp})
    try:
        links = {link["relation"]: link["url"] for link in first["link"]}
        second = served.http.get(links["next"]).json()
        assert [e["resource"]["id"] for e in second["entry"]] == expected[10:20]
        assert second["total"] == len(expected) + 2, "the total counts what is there now"
    finally:
        for resource, _stamp in late:
            seed.remove(resource, "P-B")


def test_a_resource_that_expired_from_its_index_is_skipped(served: Served) -> None:
    seed = served.seed
    ghost = {"resourceType": "Observation", "id": "ghost-hr"}
    for index in (seed.keys.fhir_index("Observation"), seed.keys.fhir_index("Observation", "P-B")):
        seed.client.zadd(index, {"ghost-hr": B_START + 20_000})
    try:
        ids = served.every_page("/fhir/Observation", patient="P-B", _count=3)[0]
        assert ids == seed.expected("Observation", lambda s: s.patient == "P-B")
        assert (
            served.ids("/fhir/Observation", patient="P-B", code=HR, _count=3)[:1]
            == (
                seed.expected(
                    "Observation", lambda s: s.patient == "P-B" and (LOINC, HR) in s.codes()
                )[:1]
            )
        )
    finally:
        seed.remove(ghost, "P-B")
