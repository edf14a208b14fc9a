"""A/B experiments: two model versions on one cohort, decided on outcomes, winner promoted.

Modules, by concern (callers import from the module they need)::

    statistics  the always-valid sequential test (mSPRT) and Thompson sampling (pure)
    assignment  which device runs which arm: a stable hash of experiment and device id
    outcomes    per-arm outcomes gathered from the devices' stored telemetry
    arms        each arm's bundle, and how devices reach it (a rollout, or a rollback)
    decision    the test on every metric; the decision and the winner's promotion
    bandit      Thompson sampling moving devices between the arms
    lifecycle   create, stop, and the scheduled pass (``ExperimentRunner``)
    views       the API's, CLI's and console's view of an experiment

Each arm is delivered by an ordinary rollout of its bundle to the arm's devices, so
the bundles travel the signed path and every wave, gate and deadline applies. When
the test on the primary metric is significant, the winner is promoted by a new
rollout to the rest of the fleet and the loser's rollout is rolled back (when the
loser is the newer release, which the devices could not be offered the winner over).

In ``requests`` mode (``requests_bandit`` with the bandit) every device of the cohort
serves both arms: A stays its active model and B, delivered by a shadow rollout with a
``split`` command, answers a share of its requests (``edgefleet.agent.inference.split``).
Both arms are then read from the same devices' events, told apart by bundle; the
decision ends B's shadow rollout and, when B won, rolls B out to the cohort too; the
bandit moves each device's share instead of moving devices (``bandit.reshare``).
"""
