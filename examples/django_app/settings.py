"""The support agent on Django (settings): lemma-middleware first in MIDDLEWARE, Django
sessions and auth, Django REST framework with token and session authentication, SQLite.

Run: ``python -m django migrate --settings examples.django_app.settings``, then
``gunicorn examples.django_app.wsgi`` or ``uvicorn examples.django_app.asgi:application``.
"""

from __future__ import annotations

import os
from pathlib import Path

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "demo-only-not-a-secret")
DEBUG = False
ALLOWED_HOSTS = ["*"]
USE_TZ = True
ROOT_URLCONF = "examples.django_app.urls"
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "rest_framework",
    "rest_framework.authtoken",
    "lemma_middleware.django",  # its checks in `manage.py check`
]

MIDDLEWARE = [
    "lemma_middleware.django.LemmaMiddleware",  # first: everything below is in the trace
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
]

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("DJANGO_DB", str(Path(__file__).with_name("db.sqlite3"))),
    }
}

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.TokenAuthentication",
        "examples.django_app.auth.BearerTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "UNAUTHENTICATED_USER": None,
}

# lemma-middleware's options: LEMMA_<OPTION>, as LemmaFlask reads them from app.config.
LEMMA_AGENT_NAME = "support-agent"
LEMMA_USER_ID_FIELD = "username"  # the default is the user's primary key
