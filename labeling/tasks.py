"""django-q entry points of the Label Studio loop: each takes an id and calls a service."""

from . import events, training


def process_event(event_id):
    """A stored webhook event, processed into the annotation store."""
    return events.event_process(event_id=event_id)


def export_training(run_id, owner_id=None):
    """A training run's fine-tuning file."""
    run = training.export(run_id=run_id, owner_id=owner_id)
    return None if run is None else f"{run.status}: {run.examples} examples"
