"""Editing: declarative pipelines of image operations applied to assets, saved as new revisions."""
