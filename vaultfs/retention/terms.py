"""Storage classes' terms: minimum storage durations, the early-deletion charge, monthly cost.

Prune's arithmetic (see `vaultfs.retention`, step 3): a band is deleted only after its
class's minimum duration, and the report prices what deleting earlier would bill.
"""

from __future__ import annotations

from dataclasses import dataclass

NS_PER_DAY = 86_400 * 10**9
GIB = 1024**3  # AWS bills storage per GB of 2^30 bytes


@dataclass(frozen=True, slots=True)
class ClassTerms:
    """What keeping data in one S3 storage class costs, for prune's arithmetic."""

    min_days: int  # minimum storage duration: deleting earlier bills the remaining days
    usd_per_gb_month: float


PRICES_AS_OF = "2025-01, AWS S3 list prices for us-east-1 (aws.amazon.com/s3/pricing)"
STORAGE_CLASSES: dict[str, ClassTerms] = {
    "STANDARD": ClassTerms(0, 0.023),
    "REDUCED_REDUNDANCY": ClassTerms(0, 0.024),
    "INTELLIGENT_TIERING": ClassTerms(0, 0.023),
    "STANDARD_IA": ClassTerms(30, 0.0125),
    "ONEZONE_IA": ClassTerms(30, 0.01),
    "GLACIER_IR": ClassTerms(90, 0.004),
    "GLACIER": ClassTerms(90, 0.0036),
    "DEEP_ARCHIVE": ClassTerms(180, 0.00099),
}
# A class this table does not know is treated as strictly as the strictest known one
# for its minimum duration and as dearly as the dearest for its price.
UNKNOWN_CLASS = ClassTerms(180, 0.024)
DAYS_PER_MONTH = 30  # AWS pro-rates early deletion by the day against a 30-day month


def class_terms(storage_class: str) -> ClassTerms:
    return STORAGE_CLASSES.get(storage_class, UNKNOWN_CLASS)


def early_delete_charge(size: int, storage_class: str, age_days: float) -> float:
    """USD billed for deleting ``size`` bytes of ``storage_class`` at ``age_days`` old."""
    terms = class_terms(storage_class)
    remaining = max(0.0, terms.min_days - age_days)
    return size / GIB * terms.usd_per_gb_month * remaining / DAYS_PER_MONTH


def monthly_cost(size: int, storage_class: str) -> float:
    return size / GIB * class_terms(storage_class).usd_per_gb_month
