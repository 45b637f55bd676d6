"""A patient's latest values (``latest:{patient}``): the newest measurement wins.

Readings of a patient can arrive out of order: a device resends what it was
refused, a monitor catches up after a network fault. Within a batch the live
sink keeps each field's newest value; across batches Redis decides, in the
batch's transaction: beside each field, under ``@`` and the field's name, the
hash keeps the time its value was measured, and a value measured earlier than
the one held is not written. Without it, a late reading replaced newer values
and the API showed the older ones as the patient's current vitals.

The times are plain, as the history's scores are. A hash written before they
were kept has none: its fields take the next value written, and are stamped
from then on.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

# The prefix of a field's measurement time in the hash; no vital's name starts with it.
STAMP = b"@"

# Sent with EVAL, not as a registered script (see fhir_store._SET_MANY): one call per
# group's transaction, for every patient of the batch in that group. ARGV holds, per
# key, its number of fields, then (field, measured at, value) for each.
_SET_NEWER = """
local a = 1
for k = 1, #KEYS do
  local n = tonumber(ARGV[a])
  local stamps = {}
  for i = 1, n do
    stamps[i] = '@' .. ARGV[a + 3 * i - 2]
  end
  local held = redis.call('HMGET', KEYS[k], unpack(stamps))
  local set = {}
  for i = 1, n do
    local at = ARGV[a + 3 * i - 1]
    if not held[i] or tonumber(held[i]) <= tonumber(at) then
      set[#set + 1] = ARGV[a + 3 * i - 2]
      set[#set + 1] = ARGV[a + 3 * i]
      set[#set + 1] = stamps[i]
      set[#set + 1] = at
    end
  end
  if #set > 0 then
    redis.call('HSET', KEYS[k], unpack(set))
  end
  a = a + 1 + 3 * n
end
return #KEYS
"""

# Per patient's latest key: (field, measured at, encoded value) of each field.
Fields = list[tuple[str, float, bytes]]


def set_newer(pipe: Any, latest: Mapping[str, Fields]) -> None:
    """Queue on `pipe` the writes of these latest keys' fields, each only if no value
    measured later is held (all keys in one hash slot on a cluster: one group's)."""
    if not latest:
        return
    args: list[str | bytes | int] = []
    for fields in latest.values():
        args.append(len(fields))
        for name, at, value in fields:
            args += [name, repr(at), value]
    # As a raw command: a cluster's transaction pipeline has no eval() of its own.
    pipe.execute_command("EVAL", _SET_NEWER, len(latest), *latest, *args)


def value_fields(raw: Mapping[bytes, bytes]) -> Iterator[tuple[str, bytes]]:
    """A latest hash's fields with their values, names decoded; the stamps left out."""
    for name, value in raw.items():
        if not name.startswith(STAMP):
            yield name.decode(), value
