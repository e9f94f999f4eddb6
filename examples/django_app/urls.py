"""The support agent's routes."""

from django.urls import path

from examples.django_app import views

urlpatterns = [
    path("health", views.health),
    path("login", views.login_view),
    path("chat", views.AgentChat.as_view()),  # the demo's turns (DRF, bearer tokens)
    path("chat/stream", views.AgentStream.as_view()),
    path("chat/<str:thread_id>", views.chat),
    path("achat/<str:thread_id>", views.achat),
    path("api/chat", views.ApiChat.as_view()),
    path("stream", views.stream),
    path("astream", views.astream),
    path("file", views.file),
    path("fail", views.fail),
    path("afail", views.afail),
]
