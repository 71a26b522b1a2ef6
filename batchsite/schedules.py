"""django-q2 schedules that repeat for good, made idempotently when each app migrates."""

from django_q.models import Schedule


def ensure_every(name, func, minutes):
    """Schedules `func` (a dotted path) every `minutes`, under `name`; running it
    again updates that one schedule rather than adding another."""
    Schedule.objects.update_or_create(
        name=name,
        defaults={"func": func, "schedule_type": Schedule.MINUTES, "minutes": minutes, "repeats": -1},
    )
