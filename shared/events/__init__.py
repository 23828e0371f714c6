"""Domain events: what happened, written in the same commit as the change (the transactional outbox),
then relayed to consumers through Cloud Tasks. See :mod:`shared.events.model` and
:mod:`shared.events.relay`."""
