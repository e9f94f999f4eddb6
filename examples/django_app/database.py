"""A fresh SQLite database for the Django example: migrated, with the users behind the
demo's bearer tokens (alice and bob, passwords ``<name>-password``, DRF tokens
``token-<name>``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SETTINGS = "examples.django_app.settings"
ROOT = Path(__file__).resolve().parents[2]
_CREATE_USERS = """
import django
django.setup()
from django.contrib.auth.models import User
from rest_framework.authtoken.models import Token
from examples.agent import TOKENS
for key, name in TOKENS.items():
    user = User.objects.create_user(name, password=name + "-password")
    Token.objects.create(user=user, key=key)
"""


def prepare_database(env: dict[str, str]) -> None:
    """Migrate the database ``env["DJANGO_DB"]`` names and create the users, in processes of
    their own with ``env`` (its ``DJANGO_SETTINGS_MODULE`` set to the example's)."""
    env = env | {"DJANGO_SETTINGS_MODULE": SETTINGS}
    migrate = [sys.executable, "-m", "django", "migrate", "-v0", "--settings", SETTINGS]
    subprocess.run(migrate, env=env, cwd=ROOT, check=True, timeout=120)
    subprocess.run([sys.executable, "-c", _CREATE_USERS], env=env, cwd=ROOT, check=True, timeout=60)
