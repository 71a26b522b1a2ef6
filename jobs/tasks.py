"""django-q2 entry points of jobs: the schedule that deletes expired files."""

from batchsite import schedules

from . import services

FILE_EXPIRY_SCHEDULE = "vllm-batch file expiry"


def delete_expired_files_task():
    return services.files_delete_expired()


def file_expiry_schedule_ensure(minutes):
    schedules.ensure_every(FILE_EXPIRY_SCHEDULE, "jobs.tasks.delete_expired_files_task", minutes)
