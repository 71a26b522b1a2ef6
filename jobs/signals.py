"""Signals jobs sends to the apps above it, which jobs may not import."""

from django.dispatch import Signal

# Sent once per batch when it reaches a final status (completed, failed, expired,
# cancelled), after the transaction that set it has committed: sender=Batch, batch_id.
batch_finished = Signal()
