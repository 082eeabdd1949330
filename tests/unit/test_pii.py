"""Events and logs never carry a whole email address, phone number or card number."""

from servers.runtime.pii import mask, mask_data


def test_email_keeps_first_letter_and_domain() -> None:
    assert mask("write to mia.garcia@example.com today") == "write to m***@example.com today"


def test_card_number_keeps_last_four() -> None:
    assert mask("card 4111 1111 1111 1111 declined") == "card ****-****-****-1111 declined"
    assert mask("4111-1111-1111-1111") == "****-****-****-1111"


def test_phone_number_keeps_last_two() -> None:
    assert mask("call +1 (555) 010-7788") == "call ***-***-**88"


def test_order_ids_dates_and_amounts_are_left_alone() -> None:
    text = "order #W2378156 of 2026-11-24 for 1234.56 USD, ticket 42"
    assert mask(text) == text


def test_nested_data_is_masked() -> None:
    data = {"subject": "refund to a@b.io", "tags": ["x"], "n": 3, "notes": ["+44 20 7946 0958"]}
    assert mask_data(data) == {
        "subject": "refund to a***@b.io",
        "tags": ["x"],
        "n": 3,
        "notes": ["***-***-**58"],
    }
