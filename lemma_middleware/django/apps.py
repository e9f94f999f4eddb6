"""The Django app ``lemma_middleware.django``: listed in ``INSTALLED_APPS``, its checks run
in ``manage.py check``."""

from django.apps import AppConfig


class LemmaConfig(AppConfig):
    """lemma_middleware's checks for ``manage.py check``."""

    name = "lemma_middleware.django"
    label = "lemma_middleware"
    verbose_name = "lemma-middleware"
