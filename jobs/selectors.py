"""Reads: for the API, always scoped to the caller; for the worker, a batch's saved lines."""

from django.db.models import Q

from batchsite.errors import NotFound

from .models import Batch, BatchResult, File


def file_get(*, owner, file_id):
    file = File.objects.filter(owner=owner, pk=file_id).first()
    if file is None:
        raise NotFound(f"No such File object: {file_id}", param="file_id")
    return file


def batch_get(*, owner, batch_id):
    batch = Batch.objects.filter(owner=owner, pk=batch_id).first()
    if batch is None:
        raise NotFound(f"No such Batch object: {batch_id}", param="batch_id")
    return batch


def _page(queryset, *, after, limit, descending, param, cursor_queryset=None):
    """Cursor pagination on (created_at, id): stable when rows share a second.
    The cursor may be any of the caller's rows, also one the filters leave out."""
    if after:
        cursor = (cursor_queryset or queryset).filter(pk=after).values("created_at", "pk").first()
        if cursor is None:
            raise NotFound(f"No such object for 'after': {after}", param=param)
        if descending:
            queryset = queryset.filter(
                Q(created_at__lt=cursor["created_at"]) | Q(created_at=cursor["created_at"], pk__lt=cursor["pk"])
            )
        else:
            queryset = queryset.filter(
                Q(created_at__gt=cursor["created_at"]) | Q(created_at=cursor["created_at"], pk__gt=cursor["pk"])
            )
    ordering = ("-created_at", "-pk") if descending else ("created_at", "pk")
    rows = list(queryset.order_by(*ordering)[: limit + 1])
    return rows[:limit], len(rows) > limit


def as_list(rows, has_more):
    data = [row.to_openai() for row in rows]
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": has_more,
    }


def file_list(*, owner, purpose=None, after=None, limit=10000, order="desc"):
    owned = File.objects.filter(owner=owner)
    queryset = owned.filter(purpose=purpose) if purpose else owned
    return as_list(
        *_page(queryset, after=after, limit=limit, descending=order == "desc", param="after", cursor_queryset=owned)
    )


def batch_list(*, owner, after=None, limit=20):
    queryset = Batch.objects.filter(owner=owner)
    return as_list(*_page(queryset, after=after, limit=limit, descending=True, param="after"))


def batch_done_lines(batch_id):
    """The input lines of the batch that have a saved result."""
    return set(BatchResult.objects.filter(batch_id=batch_id).values_list("line", flat=True))
