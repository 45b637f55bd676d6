"""The long-term archive: every reading in Parquet, identified (encrypted) and de-identified.

- :mod:`.layout`: object keys (Hive-style, deterministic from Kafka offsets and topic incarnation)
- :mod:`.topics`: the recorded first incarnation of each topic, whose objects keep plain names
- :mod:`.objects`: where objects live (a local directory or S3)
- :mod:`.columns`: readings as Arrow tables, sorted by patient then time
- :mod:`.encryption`: Parquet Modular Encryption with keys wrapped by the keyring or KMS
- :mod:`.deidentify`: HIPAA Safe Harbor de-identification of those tables
- :mod:`.writer`: one batch of a partition's readings -> objects
- :mod:`.reader`: one patient's readings, trends and alert events for a period
"""

from __future__ import annotations
