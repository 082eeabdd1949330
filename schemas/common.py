"""Field types shared by every server's contracts."""

from typing import Annotated

from pydantic import Field, StringConstraints

CustomerId = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=100),
    Field(description="The CRM customer id, e.g. 'mia_garcia_4516'."),
]

IdempotencyKey = Annotated[
    str,
    StringConstraints(min_length=1, max_length=200),
    Field(
        description="Any unique string; repeating a call with the same key changes nothing "
        "and returns the first result. Use one per intended write."
    ),
]
