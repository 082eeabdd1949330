"""Masking of personal data in events and logs (DESIGN §7): emails, phone and card numbers.

mask("mail mia.garcia@example.com or +1 (555) 010-7788, card 4111 1111 1111 1111")
-> "mail m***@example.com or ***-***-**88, card ****-****-****-1111"
"""

import re
from typing import Any

EMAIL = re.compile(r"\b([A-Za-z0-9])[A-Za-z0-9._%+-]*@([A-Za-z0-9.-]+\.[A-Za-z]{2,})\b")
# A run of digits with the separators people type; classified by how many digits it holds.
DIGITS = re.compile(r"\+?\d[\d \-().]{8,}\d")


def _mask_digits(match: re.Match[str]) -> str:
    digits = re.sub(r"\D", "", match.group())
    if 13 <= len(digits) <= 19:  # a payment card number
        return f"****-****-****-{digits[-4:]}"
    if 10 <= len(digits) <= 15:  # a phone number
        return f"***-***-**{digits[-2:]}"
    return match.group()  # order ids, dates, amounts: not personal


def mask(text: str) -> str:
    return DIGITS.sub(_mask_digits, EMAIL.sub(r"\1***@\2", text))


def mask_data(value: Any) -> Any:
    """``value`` with every string inside it masked."""
    if isinstance(value, str):
        return mask(value)
    if isinstance(value, dict):
        return {k: mask_data(v) for k, v in value.items()}
    if isinstance(value, list):
        return [mask_data(v) for v in value]
    return value
