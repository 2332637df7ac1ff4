"""Storage classes' terms: minimum storage durations, the early-deletion charge, monthly cost.

Prune's arithmetic (see `vaultfs.retention`, step 3): a band is deleted only after its
class's minimum duration, and the report prices what deleting earlier would bill. The
prices are the config's one table (`config.Prices`, ``[prices]``); the minimum durations
are AWS's rules, not prices, and live here.
"""

from __future__ import annotations

from vaultfs.config import DAYS_PER_MONTH, GIB, Prices

NS_PER_DAY = 86_400 * 10**9

# Days an object must stay in its class: deleting earlier bills the remaining days.
MIN_DAYS: dict[str, int] = {
    "STANDARD": 0,
    "REDUCED_REDUNDANCY": 0,
    "INTELLIGENT_TIERING": 0,
    "STANDARD_IA": 30,
    "ONEZONE_IA": 30,
    "GLACIER_IR": 90,
    "GLACIER": 90,
    "DEEP_ARCHIVE": 180,
}
# A class this table does not know is treated as strictly as the strictest known one
# (and `Prices.storage` prices it as the dearest).
UNKNOWN_MIN_DAYS = max(MIN_DAYS.values())


def min_days(storage_class: str) -> int:
    return MIN_DAYS.get(storage_class, UNKNOWN_MIN_DAYS)


def early_delete_charge(size: int, storage_class: str, age_days: float, prices: Prices) -> float:
    """USD billed for deleting ``size`` bytes of ``storage_class`` at ``age_days`` old."""
    remaining = max(0.0, min_days(storage_class) - age_days)
    return size / GIB * prices.storage(storage_class) * remaining / DAYS_PER_MONTH


def monthly_cost(size: int, storage_class: str, prices: Prices) -> float:
    return size / GIB * prices.storage(storage_class)
