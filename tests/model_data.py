"""Small demo-like order histories with a latent purchase process, for the kmeans and CLV tests.

Each customer joins at a random day, buys at a personal Poisson rate, may drop out after every order
(a BG/NBD-like process) and spends around a personal mean: the structure a CLV model should find and a
naive "last period's spend" cannot fully see.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
import pandas as pd
from sqlalchemy.engine import Engine

from activation import tables as t

START = datetime(2022, 1, 1)
DAYS = 730  # 2022-01-01 .. 2023-12-31


def latent_orders(customers: int, seed: int = 1, days: int = DAYS) -> pd.DataFrame:
    """Orders (order_id, customer_id, ordered_at, amount, status) of ``customers`` customers."""
    rng = np.random.default_rng(seed)
    rate = rng.gamma(0.8, 1 / 40, customers)  # orders per day while active
    dropout = rng.beta(1.5, 8, customers)  # chance to leave after each order
    mean_value = rng.gamma(3, 20, customers)
    joined = rng.integers(0, days, customers)
    rows = []
    for i in range(customers):
        day = float(joined[i])
        n = 0
        while day < days:
            amount = round(float(rng.gamma(4, mean_value[i] / 4)), 2)
            rows.append((f"o{i:06d}-{n:04d}", f"c{i:06d}", START + timedelta(days=day), amount, "Completed"))
            n += 1
            if rng.random() < dropout[i]:
                break
            day += rng.exponential(1 / rate[i])
    return pd.DataFrame(rows, columns=["order_id", "customer_id", "ordered_at", "amount", "status"])


def load_orders(engine: Engine, orders: pd.DataFrame) -> None:
    """Insert the orders (and a customers row each) into the warehouse."""
    customers = pd.DataFrame({"customer_id": sorted(orders["customer_id"].unique())})
    customers["unsubscribed"] = False
    customers["email"] = customers["customer_id"] + "@example.com"
    customers["first_name"] = "Ada"
    with engine.begin() as conn:
        conn.execute(t.orders.insert(), orders.to_dict("records"))
        conn.execute(t.customers.insert(), customers.to_dict("records"))
