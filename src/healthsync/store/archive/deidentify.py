"""HIPAA Safe Harbor de-identification of archive tables (docs/PRIVACY.md has the table).

Works on Arrow tables by column name, so the archiver's research set and the
S3 Object Lambda (Parquet, JSON lines or CSV turned into tables) strip the
same way. Only columns known to be safe pass; every other column is dropped,
so a column added later never leaks by default. Of the rest:

- ``patient_id`` and ``device_id`` become keyed pseudonyms (HMAC-SHA256) under
  a research key distinct from the live store's pseudonym key, so the research
  set cannot be joined to Redis, Kafka keys or the identified archive. A device's
  pseudonym is of the device and the patient together: a monitor moved from one
  patient to another would otherwise show its handover at two shifted times,
  giving away the difference of the two patients' shifts;
- every timestamp moves back by a secret whole number of days (1 to 365) per
  patient: consistent within a patient, so intervals, trends and the time of
  day survive, while no real date is shown; the year an object is filed under
  moves back by a secret number of days of its own (:meth:`Deidentifier.research_year`);
- ``birth_date`` becomes ``birth_year`` and ``age`` (at the reading's real
  time); from 90 on, the age is "90+" and the birth year is removed;
- names, MRN, phone, address, reading ids and device sequence numbers go.

The research keys are derived from the keyring's pseudonym key with their own
labels: whoever holds only the research set cannot compute them, and they do
not change when the encryption keys rotate.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from datetime import UTC, date, datetime

import pyarrow as pa
import pyarrow.compute as pc

from healthsync.security.keyring import Keyring
from healthsync.store.archive.columns import VITAL_NAMES

_PSEUDONYM_HEX = 32
_MAX_SHIFT_DAYS = 365
DAY_MS = 86_400_000
# Pseudonymised columns and their names in the research set.
PSEUDONYMS = {"patient_id": "patient", "device_id": "device"}
# Columns that identify no one and pass unchanged.
SAFE = frozenset(
    {
        *VITAL_NAMES,
        "other_vitals",
        "on_oxygen",
        "consciousness",
        "gender",
        "received_delay_ms",
        # alerts (`kind` and `rule` are handled below: an offline alert's name a device)
        "category",
        "severity",
        "status",
        "event",
        "vital",
        "value",
        "news2",
    }
)
TIME_COLUMNS = frozenset({"ts", "opened_at", "resolved_at", "updated_at"})
# Everything else goes, e.g. an alert's `evidence` (unshifted times), `alert_id` and
# `reading_id` (unique codes).
OLDEST_AGE_SHOWN = 89


@dataclass(frozen=True)
class Deidentifier:
    pseudonym_key: bytes
    shift_key: bytes

    @classmethod
    def from_keyring(cls, keyring: Keyring) -> Deidentifier:
        base = keyring.pseudonym_key
        return cls(
            hmac.digest(base, b"healthsync research pseudonym v1", "sha256"),
            hmac.digest(base, b"healthsync research time shift v1", "sha256"),
        )

    def pseudonym(self, kind: str, value: str) -> str:
        """The research set's stand-in for a patient or device id."""
        digest = hmac.digest(self.pseudonym_key, f"{kind}\0{value}".encode(), "sha256")
        return digest.hex()[:_PSEUDONYM_HEX]

    def shift_days(self, patient_id: str) -> int:
        """How many days this patient's times move back in the research set."""
        digest = hmac.digest(self.shift_key, patient_id.encode(), "sha256")
        return 1 + int.from_bytes(digest[:8], "big") % _MAX_SHIFT_DAYS

    def research_year(self, real_ts: float) -> int:
        """The year a research object of a batch from `real_ts` is filed under.

        Its rows show shifted times. Filed under the real year, the first objects
        under a new year would mark the real 1 January at a shifted time of each
        patient in them, giving away their shifts. The year is of the real time moved
        back by a secret 1 to 365 days of its own, the same for every batch.
        """
        # Drawn as a patient's shift is, under a name no patient id can have.
        days = self.shift_days("\0research year")
        return datetime.fromtimestamp(real_ts - days * 86_400, tz=UTC).year

    def table(self, table: pa.Table) -> pa.Table:
        """The research version of an archive table, sorted by patient, then time."""
        columns: dict[str, pa.ChunkedArray | pa.Array] = {}
        patients = table["patient_id"] if "patient_id" in table.column_names else None
        for name, kind in PSEUDONYMS.items():
            if name in table.column_names:
                column = table[name]
                if kind == "device" and patients is not None:
                    # Of the device under this patient (see the module doc).
                    column = pc.binary_join_element_wise(patients, column, "\0")
                columns[kind] = self._pseudonyms(kind, column)
        shift_ms = self._shifts(patients) if patients is not None else None
        for name in table.column_names:
            column = table[name]
            if name in SAFE:
                columns[name] = column
            elif name in TIME_COLUMNS and shift_ms is not None:
                # Without a patient to shift by, a time would show a real date: it goes.
                millis = pc.subtract(pc.cast(column, pa.int64()), shift_ms)
                columns[name] = pc.cast(millis, column.type)
        if "rule" in table.column_names:
            # An offline alert's rule says "no data from device <device id> for ...".
            columns["rule"] = pc.replace_substring_regex(
                table["rule"],
                pattern=r"^no data from device \S+",
                replacement="no data from the device",
            )
        if "kind" in table.column_names:
            # device_offline:<device id> names the device: only the kind of alert stays.
            columns["kind"] = pc.replace_substring_regex(
                table["kind"], pattern=r"^device_offline:.*$", replacement="device_offline"
            )
        if "birth_date" in table.column_names:
            columns["birth_year"], columns["age"] = _birth_year_and_age(table)
        result = pa.table(columns)
        keys = [(k, "ascending") for k in ("patient", "ts") if k in result.column_names]
        return result.take(pc.sort_indices(result, sort_keys=keys)) if keys else result

    def _pseudonyms(self, kind: str, column: pa.ChunkedArray) -> pa.Array:
        encoded = pc.dictionary_encode(column.combine_chunks())
        mapped = pa.array(
            [self.pseudonym(kind, value) for value in encoded.dictionary.to_pylist()], pa.string()
        )
        return pc.take(mapped, encoded.indices)

    def _shifts(self, patients: pa.ChunkedArray) -> pa.Array:
        encoded = pc.dictionary_encode(patients.combine_chunks())
        days = [self.shift_days(p) for p in encoded.dictionary.to_pylist()]
        return pc.take(pa.array([d * DAY_MS for d in days], pa.int64()), encoded.indices)


def _birth_year_and_age(table: pa.Table) -> tuple[pa.Array, pa.Array]:
    """Birth year and age at the reading (real) time; "90+" and no year from age 90."""
    births = table["birth_date"]
    years: list[int | None] = [None] * len(births)
    ages: list[str | None] = [None] * len(births)
    # Few readings carry a birth date: only those are looked at.
    present = pc.indices_nonzero(pc.is_valid(births)).to_pylist()
    times = pc.cast(table["ts"], pa.int64()) if "ts" in table.column_names else None
    for i in present:
        born = _parse_date(births[i].as_py())
        if born is None:
            continue
        ts_ms = times[i].as_py() if times is not None else None
        at = datetime.fromtimestamp(ts_ms / 1000, tz=UTC).date() if ts_ms else date.today()
        age = at.year - born.year - ((at.month, at.day) < (born.month, born.day))
        older = age > OLDEST_AGE_SHOWN
        years[i] = None if older else born.year
        ages[i] = "90+" if older else str(max(age, 0))
    return pa.array(years, pa.int16()), pa.array(ages, pa.string())


def _parse_date(text: str | None) -> date | None:
    if not text:
        return None
    try:
        return date.fromisoformat(text[:10])
    except ValueError:
        return None  # not a date: dropped like the rest of the birth date
