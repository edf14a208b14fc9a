"""Every state vocabulary of edgefleet, defined once, with its transitions as one table.

``install``: a model install on a device, as the agent's journal records it and as the
control plane tracks each device of a rollout. ``rollout``: a rollout's phases and the
operator actions that move it. ``build``: a bundle build job on the control
plane. Both sides import these; nothing here imports either.
"""
