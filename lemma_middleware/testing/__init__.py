"""Testing your own traces: the pytest plugin's fixtures (``lemma_traces``,
``lemma_production_traces``) and the contract checker. Importing it loads neither uvicorn
nor the inbox."""

from lemma_middleware.testing.contract import (
    ContractViolation,
    Violation,
    assert_conformant,
    check_traces,
)
from lemma_middleware.testing.plugin import TraceCapture

__all__ = ["ContractViolation", "TraceCapture", "Violation", "assert_conformant", "check_traces"]
