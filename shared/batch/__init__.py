"""Batch jobs: one credit hold per job, one idempotent task per item, one settlement.

Every kind of batch job (AI image generation, edits; next: videos, store sync-back) goes through
the same lifecycle, in :mod:`shared.batch.lifecycle`; a kind (:class:`shared.batch.kind.JobKind`)
only says where its documents live, how its tasks and hold are named, what a finished item is worth,
and supplies the work of one item. :mod:`shared.batch.routes` holds the HTTP side they share.
"""
