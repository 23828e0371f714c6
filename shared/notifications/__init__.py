"""In-app and email notifications: consumers of domain events (:mod:`shared.events`)."""
