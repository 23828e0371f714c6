"""Adapters: the implementations of the domain ports on real infrastructure (``firestore/``: every
document path, query and precondition). Only the platform and the entry points build them."""
