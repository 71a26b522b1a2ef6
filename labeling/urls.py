from django.urls import re_path

from . import views

app_name = "labeling"

# Label Studio joins "<Model URL>/" and the path; accept both with and without a trailing slash.
urlpatterns = [
    re_path(r"^health/?$", views.health, name="health"),
    re_path(r"^setup/?$", views.setup, name="setup"),
    re_path(r"^versions/?$", views.versions, name="versions"),
    re_path(r"^predict/?$", views.predict, name="predict"),
    re_path(r"^webhook/?$", views.webhook, name="webhook"),
    re_path(r"^train/?$", views.train, name="train"),
]
