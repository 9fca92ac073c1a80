"""The provider contract against the in-memory provider."""

from __future__ import annotations

import pytest

from directory.dns.memory import MemoryProvider
from tests.dns.contract import CHECKS

MARK = "relay-directory:unit"


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
async def test_memory_provider_meets_the_contract(check):
    await check(MemoryProvider("example.com"), "example.com", MARK)
