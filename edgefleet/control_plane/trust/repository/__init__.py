"""The signed TUF repository the fleet verifies bundles against, one truth for every replica.

Built on python-tuf's Metadata API. Each role has keys of its own, kept in the
``Keyring`` (``keys/``, private halves encrypted when a passphrase is set, or held
by an external signing command): root needs ``root_threshold`` of its
``root_keys`` signatures (2 of 3 by default; move root keys offline after
creation), targets, snapshot and timestamp one each, the last two online because
the control plane re-signs them on a schedule.

**Where the state lives.** Every signed version of every role is a row of
``repository_metadata`` in the control plane's database, unique per (role,
version): the database is the truth, and several control-plane replicas sign from
it. Each signing step (``_step``) first writes the one ``repository_lock`` row —
on PostgreSQL a row lock held until the commit, on SQLite the single writer lock —
then reads the latest version of every role, signs, inserts the new versions and
publishes them as files, and commits. So steps are serialized across replicas,
each starts from what the previous one committed, versions only go up, and a
version is never signed twice with different contents (the constraint would refuse
it). A replica with an old view cannot point a timestamp back at an older snapshot:
it has no view of its own between steps.

The files every replica and mirror serves live under ``root_dir``, which replicas
share (a shared directory: NFS, a mounted volume), written under the same lock::

    <root>/metadata/1.root.json, root.json      root (versioned + a copy)
    <root>/metadata/N.targets.json              targets
    <root>/metadata/N.snapshot.json             snapshot
    <root>/metadata/timestamp.json              timestamp
    <root>/targets/<sha256>.<target path>       target files (bundles)
    <root>/keys/                                the keyring

``consistent_snapshot`` is on, so every file a client fetches but the timestamp
has a stable name. Files are written atomically; ``init_or_load`` writes the
database's state out again (after a restore, or a commit that failed after its
files were written).

**Keys** are rotated or revoked by publishing a new root version signed by the old
root's threshold and the new root's, so a device that was offline across several
rotations follows the chain ``N.root.json`` one step at a time, and a root signed
only by new keys is refused.

The package is split by concern: ``state`` (the database side: signed versions,
trust floors), ``signed`` (``SignedRepository``: steps, set-up, signing, serving)
and ``keys`` (key rotation, revocation and delegation, mixed into it).

**Restores.** Devices report the versions they trust (``DeviceStatus.trusted_versions``);
``raise_trust_floor`` keeps the highest per role. A step that would sign a version
at or below it raises ``TrustFloorError`` (a device would refuse it: the repository
was restored from an older state), and ``bump`` re-signs past it — on start-up and
on the scheduled refresh when the repository is behind, or by ``edgefleet repo bump``.
"""

from edgefleet.control_plane.trust.repository.signed import (
    FILE_NAME_RE,
    SERVED_DIRS,
    SignedRepository,
)
from edgefleet.control_plane.trust.repository.state import (
    EXPIRY,
    MAX_VERSION,
    TrustFloorError,
    create_repository_tables,
    raise_trust_floor,
    standalone_engine,
    trust_floors,
)

__all__ = [
    "EXPIRY",
    "FILE_NAME_RE",
    "MAX_VERSION",
    "SERVED_DIRS",
    "SignedRepository",
    "TrustFloorError",
    "create_repository_tables",
    "raise_trust_floor",
    "standalone_engine",
    "trust_floors",
]
