"""Firestore adapters: the only modules that hold document paths, queries and preconditions."""
