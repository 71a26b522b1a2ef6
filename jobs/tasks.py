"""django-q2 entry points of jobs: the schedule that deletes expired files."""

from django_q.models import Schedule

from . import services

FILE_EXPIRY_SCHEDULE = "vllm-batch file expiry"


def delete_expired_files_task():
    return services.files_delete_expired()


def file_expiry_schedule_ensure(minutes):
    Schedule.objects.update_or_create(
        name=FILE_EXPIRY_SCHEDULE,
        defaults={
            "func": "jobs.tasks.delete_expired_files_task",
            "schedule_type": Schedule.MINUTES,
            "minutes": minutes,
            "repeats": -1,
        },
    )
