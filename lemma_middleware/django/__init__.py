"""Django support: list ``"lemma_middleware.django.LemmaMiddleware"`` first in
``settings.MIDDLEWARE`` (and ``"lemma_middleware.django"`` in ``INSTALLED_APPS`` for
``manage.py check`` to run its checks). See :mod:`lemma_middleware.adapters.django`."""

from django.core import checks

from lemma_middleware.adapters.django import USER_ID_FIELD, LemmaMiddleware, lemma_checks

checks.register(lemma_checks, "lemma_middleware")

__all__ = ["USER_ID_FIELD", "LemmaMiddleware", "lemma_checks"]
