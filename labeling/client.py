"""A small client for Label Studio's REST API (tested against 1.23.2).

Authenticates with a legacy API token (`Authorization: Token <key>`; Label Studio's
organization must have legacy tokens enabled). Every call is bounded by a timeout;
every failure, including an unreachable server, is a LabelStudioError.
"""

import json

import httpx

DEFAULT_TIMEOUT = 30.0
# Retrieving predictions runs the ML backend's /predict inside Label Studio's
# request, and Label Studio gives /predict up to 100 s.
PREDICT_TIMEOUT = 130.0
PAGE_SIZE = 100
PREDICTIONS_PER_REQUEST = 500
MAX_MESSAGE = 1000


class LabelStudioError(Exception):
    """Label Studio refused a call or did not answer: `status` is the HTTP status,
    None when no answer came."""

    def __init__(self, status, message):
        super().__init__(f"Label Studio: {message}" if status is None else f"Label Studio {status}: {message}")
        self.status = status
        self.message = message


def _error_message(response):
    """Label Studio's error body is {"detail", "validation_errors", ...}; fall back to the text."""
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:MAX_MESSAGE] or response.reason_phrase
    if not isinstance(body, dict):
        return json.dumps(body)[:MAX_MESSAGE]
    message = str(body.get("detail") or body.get("error") or body.get("errors") or "")
    if body.get("validation_errors"):
        message = (
            f"{message}: {json.dumps(body['validation_errors'])}" if message else json.dumps(body["validation_errors"])
        )
    return (message or json.dumps(body))[:MAX_MESSAGE]


class LabelStudio:
    """`LabelStudio(url, token)`; use as a context manager or call close()."""

    def __init__(self, url, token, *, timeout=DEFAULT_TIMEOUT, transport=None):
        if not url or not token:
            raise LabelStudioError(None, "a Label Studio URL and API token are needed")
        self.url = url.rstrip("/")
        self.http = httpx.Client(
            base_url=self.url,
            headers={"Authorization": f"Token {token}", "Accept": "application/json"},
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
            transport=transport,
        )

    def close(self):
        self.http.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def request(self, method, path, *, timeout=None, **kwargs):
        """The decoded JSON answer (None for an empty one); LabelStudioError otherwise."""
        if timeout is not None:
            kwargs["timeout"] = httpx.Timeout(timeout, connect=min(timeout, 10.0))
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.TimeoutException as exc:
            raise LabelStudioError(None, f"{method} {path} timed out ({type(exc).__name__})") from None
        except httpx.HTTPError as exc:
            raise LabelStudioError(None, f"cannot reach {self.url}: {exc}") from None
        if response.status_code >= 400:
            raise LabelStudioError(response.status_code, _error_message(response))
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            raise LabelStudioError(response.status_code, f"{method} {path} answered with non-JSON") from None

    # Projects and tasks ---------------------------------------------------

    def project(self, project_id):
        return self.request("GET", f"/api/projects/{int(project_id)}/")

    def create_project(self, title, label_config, **fields):
        return self.request("POST", "/api/projects/", json={"title": title, "label_config": label_config, **fields})

    def tasks(self, project_id, *, page_size=PAGE_SIZE, with_predictions=False):
        """Every task of the project, page by page, as an iterator; `with_predictions`
        adds each task's `predictions` and `annotations`."""
        params = {"project": int(project_id), "page_size": page_size}
        if with_predictions:
            params["fields"] = "all"
        seen, page, total = 0, 1, None
        while total is None or seen < total:
            try:
                body = self.request("GET", "/api/tasks/", params={**params, "page": page})
            except LabelStudioError as exc:
                # Past the last page (tasks deleted while paging): Label Studio says 404 "Invalid page."
                if exc.status == 404 and page > 1:
                    return
                raise
            tasks = body.get("tasks") or []
            total = body.get("total", 0) if total is None else total
            yield from tasks
            seen += len(tasks)
            if len(tasks) < page_size:
                return
            page += 1

    def task(self, task_id):
        return self.request("GET", f"/api/tasks/{int(task_id)}/")

    def import_tasks(self, project_id, tasks):
        """Imports tasks ({"data": {...}} or plain data dicts); returns their ids in order."""
        body = self.request(
            "POST", f"/api/projects/{int(project_id)}/import", params={"return_task_ids": "true"}, json=list(tasks)
        )
        return body.get("task_ids") or []

    def delete_task(self, task_id):
        self.request("DELETE", f"/api/tasks/{int(task_id)}/")

    # Predictions ------------------------------------------------------------

    def predictions(self, task_id):
        return self.request("GET", "/api/predictions/", params={"task": int(task_id)})

    def create_predictions(self, project_id, items, *, per_request=PREDICTIONS_PER_REQUEST):
        """Stores predictions ({"task", "result", "score", "model_version"}) in bulk;
        returns how many Label Studio created. With strict prediction validation on,
        one invalid item fails its whole request."""
        items = list(items)
        created = 0
        for start in range(0, len(items), per_request):
            chunk = items[start : start + per_request]
            body = self.request("POST", f"/api/projects/{int(project_id)}/import/predictions", json=chunk)
            created += (body or {}).get("created", len(chunk))
        return created

    def retrieve_predictions(self, project_id, task_ids, *, timeout=PREDICT_TIMEOUT):
        """The data manager's "Retrieve predictions" action: Label Studio asks the
        project's ML backend for these tasks and stores what it answers."""
        return self.request(
            "POST",
            "/api/dm/actions",
            params={"id": "retrieve_tasks_predictions", "project": int(project_id)},
            json={"selectedItems": {"all": False, "included": [int(t) for t in task_ids]}},
            timeout=timeout,
        )

    # ML backends -------------------------------------------------------------

    def ml_backends(self, project_id):
        return self.request("GET", "/api/ml/", params={"project": int(project_id)})

    def connect_ml_backend(self, project_id, url, title, *, auth=None, is_interactive=True, timeout=PREDICT_TIMEOUT):
        """Connects a model (Label Studio calls its /health and /setup first).
        `auth` is (user, password) for basic auth. Returns the backend, which must be
        "Connected" ("CO"); LabelStudioError otherwise."""
        body = {"project": int(project_id), "url": url, "title": title, "is_interactive": is_interactive}
        if auth:
            body.update(auth_method="BASIC_AUTH", basic_auth_user=auth[0], basic_auth_pass=auth[1])
        backend = self.request("POST", "/api/ml/", json=body, timeout=timeout)
        if backend.get("state") != "CO":
            raise LabelStudioError(
                None,
                f"ML backend {backend.get('id')} at {url} is in state {backend.get('state')!r}, not connected: "
                f"{backend.get('error_message') or 'no reason given'}",
            )
        return backend

    def interactive_annotating(self, ml_backend_id, task_id, context=None, *, timeout=PREDICT_TIMEOUT):
        """Asks the backend for an interactive pre-annotation; returns Label Studio's `data`."""
        body = self.request(
            "POST",
            f"/api/ml/{int(ml_backend_id)}/interactive-annotating",
            json={"task": int(task_id), "context": context or {}},
            timeout=timeout,
        )
        # Label Studio reports backend failures here with 200 and {"errors": [...]}.
        if body.get("errors"):
            raise LabelStudioError(200, "; ".join(str(e) for e in body["errors"])[:MAX_MESSAGE])
        return body.get("data")

    # Annotations and webhooks -----------------------------------------------

    def create_annotation(self, task_id, result, *, ground_truth=False, **fields):
        body = {"result": result, "ground_truth": ground_truth, **fields}
        return self.request("POST", f"/api/tasks/{int(task_id)}/annotations/", json=body)

    def update_annotation(self, annotation_id, **fields):
        return self.request("PATCH", f"/api/annotations/{int(annotation_id)}/", json=fields)

    def delete_annotation(self, annotation_id):
        self.request("DELETE", f"/api/annotations/{int(annotation_id)}/")

    def create_webhook(self, project_id, url, headers=None, *, actions=None):
        """A project webhook sending full payloads for every action (or only `actions`)."""
        body = {
            "project": int(project_id),
            "url": url,
            "headers": headers or {},
            "send_payload": True,
            "send_for_all_actions": not actions,
            "actions": list(actions or []),
        }
        return self.request("POST", "/api/webhooks/", json=body)
