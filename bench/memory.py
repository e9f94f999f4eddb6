"""The memory section: the peak RSS of uvicorn streaming a large SSE answer, bare and traced."""

from __future__ import annotations

import re
import signal
import tempfile
from pathlib import Path

import httpx

from bench.harness import local_inbox, serve
from bench.variants import ASGI_LABELS, Variant


def peak_rss_streaming(variant: Variant, megabytes: int, env: dict[str, str]) -> float:
    """Peak RSS (MB) of a uvicorn server streaming ``megabytes`` of SSE to a reader."""
    process, url = serve("asgi", variant, env)
    try:
        with httpx.stream("GET", f"{url}/stream?mb={megabytes}", timeout=120) as response:
            received = sum(len(chunk) for chunk in response.iter_raw(1 << 20))
        assert received >= megabytes * 1024 * 1024, received
        status = Path(f"/proc/{process.pid}/status").read_text()
        return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) / 1024  # type: ignore[union-attr]
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)


def memory_section(megabytes: int) -> dict[Variant, float]:
    """Peak RSS (MB) by variant, the bare app and the middleware; the table printed."""
    with tempfile.TemporaryDirectory() as folder, local_inbox(Path(folder) / "db") as inbox:
        peaks = {
            variant: peak_rss_streaming(variant, megabytes, inbox.env)
            for variant in (Variant.BARE, Variant.LEMMA)
        }
    bare, lemma = peaks[Variant.BARE], peaks[Variant.LEMMA]
    print(f"\nMemory: peak RSS of uvicorn streaming {megabytes} MB of SSE to a client")
    print(f"{'variant':38} {'peak RSS MB':>12}")
    print(f"{ASGI_LABELS[Variant.BARE]:38} {bare:12.1f}")
    print(f"{ASGI_LABELS[Variant.LEMMA]:38} {lemma:12.1f}  (+{lemma - bare:.1f} MB)")
    return peaks
