"""The support agent's views: sync and async chat (session auth), a DRF view (token or
session auth), sync and async streaming, a file, failing views. Every answer comes from the
fake LLM step (a child generation)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from io import BytesIO
from typing import Any

from django.contrib.auth import aauthenticate, alogin
from django.http import (
    FileResponse,
    HttpRequest,
    HttpResponse,
    JsonResponse,
    StreamingHttpResponse,
)
from django.views.decorators.csrf import csrf_exempt
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from examples.agent import fake_llm


def _message(request: HttpRequest) -> str:
    return str(json.loads(request.body or b"{}").get("message", ""))


def health(request: HttpRequest) -> HttpResponse:
    return HttpResponse("ok")  # not traced (the default excluded paths)


@csrf_exempt
async def login_view(request: HttpRequest) -> HttpResponse:
    """POST username and password (JSON): a session cookie."""
    body = json.loads(request.body)
    user = await aauthenticate(request, username=body["username"], password=body["password"])
    if user is None:
        return JsonResponse({"error": "wrong credentials"}, status=401)
    await alogin(request, user)
    return JsonResponse({"ok": True})


@csrf_exempt
def chat(request: HttpRequest, thread_id: str) -> HttpResponse:
    """A sync view that never looks at request.user (the middleware loads it afterwards)."""
    return JsonResponse({"thread": thread_id, "answer": fake_llm(_message(request))})


@csrf_exempt
async def achat(request: HttpRequest, thread_id: str) -> HttpResponse:
    """An async view that reads the user without blocking, then asks the model."""
    user = await request.auser()
    answer = fake_llm(_message(request))
    return JsonResponse({"thread": thread_id, "user": user.get_username(), "answer": answer})


class ApiChat(APIView):
    """Django REST framework: the user is authenticated at the view (token or session)."""

    permission_classes = (IsAuthenticated,)

    def post(self, request: Request) -> Response:
        message = str(request.data.get("message", ""))
        return Response({"user": request.user.get_username(), "answer": fake_llm(message)})


class AgentChat(APIView):
    """The demo's turn (the other examples' ``POST /chat``): a bearer-token user, the fake
    model; the message ``crash`` fails the turn."""

    permission_classes = (IsAuthenticated,)

    def post(self, request: Request) -> Response:
        message = str(request.data.get("message", ""))
        if message == "crash":
            raise RuntimeError("the knowledge base is unreachable")
        return Response({"answer": fake_llm(message)})


class AgentStream(APIView):
    """The demo's streamed turn: the answer word by word (server-sent events)."""

    permission_classes = (IsAuthenticated,)

    def post(self, request: Request) -> StreamingHttpResponse:
        message = str(request.data.get("message", ""))
        return StreamingHttpResponse(_words(message), content_type="text/event-stream")


def _words(message: str) -> Iterator[bytes]:
    for word in fake_llm(message).split(" "):
        yield f"data: {word} \n\n".encode()


@csrf_exempt
def stream(request: HttpRequest) -> StreamingHttpResponse:
    return StreamingHttpResponse(_words(_message(request)), content_type="text/event-stream")


@csrf_exempt
async def astream(request: HttpRequest) -> StreamingHttpResponse:
    message = _message(request)

    async def words() -> AsyncIterator[bytes]:
        for chunk in _words(message):  # the model runs while streaming: still a child
            yield chunk

    return StreamingHttpResponse(words(), content_type="text/event-stream")


def file(request: HttpRequest) -> FileResponse:
    return FileResponse(BytesIO(b"%PDF-1.4 a report\n" * 100), content_type="application/pdf")


@csrf_exempt
def fail(request: HttpRequest) -> Any:
    fake_llm(_message(request))
    raise RuntimeError("the knowledge base is unreachable")


@csrf_exempt
async def afail(request: HttpRequest) -> Any:
    raise RuntimeError("the async knowledge base is unreachable")
