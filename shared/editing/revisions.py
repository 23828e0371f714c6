"""Append-only asset revisions, as editing and revert use them: store new pixels under keys of
their own (``r{n}-{random}``), then commit revision n+1 together with the asset's current revision.

The one implementation is the asset path, :mod:`shared.catalog.assets` (writes through the
:class:`~shared.catalog.ports.AssetRepository`); this module names what editing uses of it.
A lost race leaves only unreferenced objects, which :func:`discard_objects` deletes unless the
revision turns out to be ours (a commit whose answer was lost is recognised by its token).
"""

from __future__ import annotations

from shared.catalog.assets import commit_revision, delete_objects, discard_objects, get_revision, write_objects
from shared.catalog.ports import ItemGuard, ItemTaken, RevisionConflict

__all__ = [
    "ItemGuard",
    "ItemTaken",
    "RevisionConflict",
    "commit_revision",
    "delete_objects",
    "discard_objects",
    "get_revision",
    "write_objects",
]
