"""Batch jobs: one credit hold per job, one idempotent task per item, one settlement.

Every kind of batch job (AI image generation, edits; next: videos, store sync-back) goes through
the same lifecycle, in :mod:`shared.batch.lifecycle`, the only orchestrator; a kind
(:class:`shared.batch.kind.JobKind`) says which collection its documents live in, how its tasks and hold are named,
what a finished item is worth, and takes the steps only it knows (record a job, build a fan-out page,
run one item) as methods, with the services it builds from the platform. The lifecycle and the reaper
read and write a kind's jobs, items, counters and page markers only through its
:class:`shared.batch.store.JobStore` (Firestore: :mod:`shared.adapters.firestore.batch`).
:mod:`shared.http.batch_routes` holds the HTTP side they share: a worker entry point registers its kind and
nothing else.
"""
