"""The outbox: telemetry events and install reports land in SQLite (WAL) first and leave
only once the control plane has receipted them.

Appends are buffered in memory and committed in batches (``flush``; the forwarder
flushes every few tens of milliseconds and ``append`` flushes a full batch itself),
so an accepted event is on disk within one flush interval. A row is deleted when a
``Receipt`` from the control plane names its event id (``receipt``); the broker's
PUBACK says nothing about whether the control plane stored it.

Rows are keyed ``priority << 48 | counter``, so the table itself is ordered by
priority, then by insertion: reading in key order sends the most important class
first and keeps order within a class, and the overflow policy deletes whole runs.

**Overflow policy**, applied at every flush: while the rows take more than
``max_bytes``, delete the rows with the *highest priority number* first (3 before
2 before 1 before 0) and, within one priority, the *oldest* first. Each row is
charged its payload plus ``ROW_OVERHEAD``; the database file must also stay within
``max_bytes + FILE_SLACK`` (it is measured, and more rows go when it does not).

**Bytes on disk** = spool file + ``-wal``: the file is kept at its live pages
(``auto_vacuum=FULL``) and the write-ahead log is checkpointed with TRUNCATE once it
passes ``wal_limit(max_bytes)``, so both together stay within ``max_bytes +
disk_slack(max_bytes)``: ``FILE_SLACK`` (schema pages, B-tree interior pages) plus
the WAL limit plus one batch of rows (at most ``batch_size`` times the largest event).

**Drop accounting**: every drop is merged into one running summary (``meta`` row
``drops``, rewritten in the transaction that drops): rows dropped per priority, per
kind, and the inferences the dropped ``inference`` windows counted. It is not a row
of the spool, so it never causes a drop. ``seal_summary`` (the forwarder calls it once
the link is back and drops have stopped, or the summary is a minute old) turns it
into one ``spool`` event that is never dropped itself. A dropped row that had already
been handed to the broker may still arrive: if a receipt names it before the summary
is sealed, it is taken off.

**A buffer, never a single point of failure**: a spool that cannot be opened (garbage
over its header, a torn file) is moved aside as ``spool.sqlite.corrupt-<ts>`` and a
fresh one is made, with an error logged and an ``error`` event (``where: "spool"``)
in the new spool. ``check`` (called every second or so) notices a spool file deleted,
replaced or overwritten under the running agent and recreates it the same way,
carrying over every row it can still read. When no file can be made at all, the
spool runs in memory and keeps trying the file.

The package is split by concern: ``outbox`` (``Spool``: appends, reads, receipts,
the overflow policy and drop accounting), ``storage`` (the SQLite file: schema,
size limits, migration) and ``recovery`` (opening and recreating the file, mixed
into ``Spool``); its public surface is re-exported here.
"""

from edgefleet.agent.telemetry.spool.outbox import Row, Spool
from edgefleet.agent.telemetry.spool.storage import (
    FILE_SLACK,
    REPORT,
    ROW_OVERHEAD,
    SPOOL_KIND,
    TELEMETRY,
    disk_slack,
    wal_limit,
)

__all__ = [
    "FILE_SLACK",
    "REPORT",
    "ROW_OVERHEAD",
    "SPOOL_KIND",
    "TELEMETRY",
    "Row",
    "Spool",
    "disk_slack",
    "wal_limit",
]
