"""How the offline policy does on the labelled ticket sets, and what its decision costs.

    python -m bench.policy_sets [--rounds 5]

For each set of ``tests/data`` (``tests/policy_sets.py``; the tau2 sets need the shared data):
tickets, exact, wrong writes and missed writes per class. Then the cost of deciding, per
ticket, without I/O: ``policy.plan`` (find, check, decide) in milliseconds, p50 / p90 / max, and
as a ratio of ``triage.classify`` on the same ticket in the same run (the step every policy has
had); and the CRM look-ups the graph makes for it: ``find_customer`` calls (candidates of the
message) and ``get_product`` calls (products of the customer's orders and those named).
"""

import argparse
import statistics
import time

from orchestrator import policy
from orchestrator.finding import identity_lookups
from orchestrator.triage import classify
from tests.policy_sets import SETS, run, store_for, table, tickets


def _ms(seconds: list[float]) -> str:
    ordered = sorted(seconds)
    p90 = ordered[int(0.9 * (len(ordered) - 1))]
    p50 = statistics.median(ordered)
    return f"p50 {p50 * 1000:.2f} ms, p90 {p90 * 1000:.2f} ms, max {ordered[-1] * 1000:.2f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="timed passes over every set")
    rounds = parser.parse_args().rounds
    decide: list[float] = []
    sort_out: list[float] = []
    lookups: list[int] = []
    fetched: list[int] = []
    for name in SETS:
        store = store_for(name)
        labelled = tickets(name)
        if store is None or not labelled:
            print(f"## {name}: skipped (no data)\n")
            continue
        runs = [run(t, store) for t in labelled]
        print(f"## {name}\n\n{table(runs)}\n")
        for r in runs:
            text = f"{r.ticket['subject']}\n\n{r.ticket['message']}"
            customer = store.customer(r.customer_id) if r.customer_id else None
            orders = store.orders(r.customer_id) if r.customer_id else []
            wanted = policy.products_wanted(text, orders, store.product_types())
            products = {p: store.product(p) for p in wanted}
            lookups.append(
                len(identity_lookups(text)) if r.ticket.get("customer_id") is None else 0
            )
            fetched.append(len(wanted))
            for _ in range(rounds):
                started = time.perf_counter()
                found = classify(text)
                triaged = time.perf_counter()
                policy.plan(found, text, customer, orders, products, policy.Limits())
                sort_out.append(triaged - started)
                decide.append(time.perf_counter() - triaged)
    print(f"decision (plan): {_ms(decide)}")
    print(f"baseline (triage): {_ms(sort_out)}")
    ratio = statistics.median(decide) / statistics.median(sort_out)
    print(f"ratio plan / triage, medians: {ratio:.1f}x")
    print(
        f"CRM look-ups per ticket: find_customer mean {statistics.mean(lookups):.1f} "
        f"(max {max(lookups)}), get_product mean {statistics.mean(fetched):.1f} "
        f"(max {max(fetched)})"
    )


if __name__ == "__main__":
    main()
