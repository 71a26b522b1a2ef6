"""The operations console: admin pages, `manage.py worker` (control.py), the log files and their viewer."""
