"""``python -m lemma_middleware``: the ``lemma-middleware`` command (see :mod:`.inbox.cli`)."""

from lemma_middleware.inbox.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
