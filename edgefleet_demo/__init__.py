"""``edgefleet demo``: the whole spine on one machine, and the digits model it trains.

Kept out of the product packages: nothing in ``edgefleet`` imports it except the
``demo`` command, which loads it on demand."""
