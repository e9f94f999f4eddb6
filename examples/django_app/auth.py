"""``Authorization: Bearer <token>`` for Django REST framework (its own class reads
``Token <token>``): the bearer tokens the other examples and the demo use."""

from __future__ import annotations

from rest_framework.authentication import TokenAuthentication


class BearerTokenAuthentication(TokenAuthentication):
    keyword = "Bearer"
