"""/metrics as Prometheus reads it: one series per name and labels, whichever stage counted.

The processor and the archiver both read the vitals topic through the same
offset-gap check, and both count `fetch_gaps_total` and `offsets_skipped_total`.
The collector put both counts in one family with the same labels: /metrics held
two samples of one series, of which Prometheus keeps one ("duplicate sample for
timestamp"), so a hole the archiver skipped could vanish behind the processor's 0.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from healthsync.metrics import PipelineCollector


def scraped(collector: PipelineCollector) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics by name and labels; fails on a series given twice."""
    registry = CollectorRegistry()
    registry.register(collector)
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            series = (sample.name, tuple(sorted(sample.labels.items())))
            assert series not in samples, f"{series} given twice"
            samples[series] = sample.value
    return samples


def test_a_counter_two_stages_keep_is_a_series_per_stage() -> None:
    collector = PipelineCollector()
    collector.snapshot = {
        "processor": {"fetch_gaps_total": "0", "readings_processed_total": "10"},
        "archiver": {"fetch_gaps_total": "3", "archive_errors_total": "1"},
    }
    samples = scraped(collector)
    assert samples[("healthsync_fetch_gaps_total", (("component", "processor"),))] == 0
    assert samples[("healthsync_fetch_gaps_total", (("component", "archiver"),))] == 3
    # A name only one stage keeps is as it was.
    assert samples[("healthsync_readings_processed_total", ())] == 10
    assert samples[("healthsync_archive_errors_total", ())] == 1


def test_labels_of_their_own_are_kept_beside_the_stage() -> None:
    collector = PipelineCollector()
    collector.snapshot = {
        "processor": {"offsets_skipped_total|partition=0": "1"},
        "archiver": {"offsets_skipped_total|partition=0": "2"},
    }
    samples = scraped(collector)
    name = "healthsync_offsets_skipped_total"
    assert samples[(name, (("component", "processor"), ("partition", "0")))] == 1
    assert samples[(name, (("component", "archiver"), ("partition", "0")))] == 2


def test_the_offset_gap_counts_are_labelled_from_the_first_one() -> None:
    """So that their series stay the same when a second stage counts one too."""
    collector = PipelineCollector()
    collector.snapshot = {"processor": {"fetch_gaps_total": "2"}}
    gaps = {k: v for k, v in scraped(collector).items() if k[0] == "healthsync_fetch_gaps_total"}
    assert gaps == {("healthsync_fetch_gaps_total", (("component", "processor"),)): 2}
