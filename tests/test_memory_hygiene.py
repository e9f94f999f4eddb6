"""A traced request leaves nothing for the garbage collector: its objects are freed by
reference counting as soon as it ends, so tracing adds no collection pauses under load."""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterator

import pytest

from .apps.asgi_apps import make_app
from .apps.wsgi_apps import call, make_flask_app
from .helpers import HEADERS, Captured, post


@pytest.fixture
def garbage() -> Iterator[Callable[[], list[object]]]:
    """Collects what became unreachable only through reference cycles since the start."""
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:

        def cyclic() -> list[object]:
            gc.collect()
            return [o for o in gc.garbage if type(o).__module__.startswith("lemma_middleware")]

        yield cyclic
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()


async def test_an_asgi_request_leaves_no_reference_cycle(
    captured: Captured, garbage: Callable[[], list[object]]
) -> None:
    app = make_app(captured.client)
    for _ in range(3):
        response = await post(app, "/chat/c", json={"message": "hi"}, headers=HEADERS)
        assert response.status_code == 200
    assert len(captured.roots()) == 3
    assert garbage() == []


def test_a_wsgi_request_leaves_no_reference_cycle(
    captured: Captured, garbage: Callable[[], list[object]]
) -> None:
    app = make_flask_app(captured.client)
    for _ in range(3):
        response = call(app, "POST", "/chat/c", json_body={"message": "hi"}, headers=HEADERS)
        assert response.json() == {"answer": "HI"}
    assert len(captured.roots()) == 3
    assert garbage() == []
