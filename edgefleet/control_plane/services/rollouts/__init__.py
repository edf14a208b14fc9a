"""Rollouts: which devices, in which waves, and what the operators and devices did.

A rollout picks its devices with a selector, splits them into cumulative waves
(``[1, "10%", "50%", "100%"]``) and is then advanced wave by wave by the
orchestrator. Its states and the operator actions that move them are the contract's
``edgefleet.states.rollout`` table; every state change is recorded in the audit log.

Modules, by concern (callers import from the module they need)::

    selection     selectors, device choice, wave sizes, older rollouts stepping aside
    lifecycle     create a rollout; operator actions through the transition table
    waves         offer a wave, roll rows back, end a rollout, gather a wave's gate inputs
    deadlines     install and wave deadlines, clocks paused offline, time-outs
    gates         pure gate arithmetic over those inputs (no database, no IO)
    orchestrator  the scheduled pass that moves running rollouts through their waves
    reports       device install reports and re-offers when a device returns
    views         the API's and CLI's view of rollouts
    outbox        the offers and commands a state change owes devices
    atomic        the fleet-wide atomic switch: quorum, signed switch order, or nobody

Device states (``RolloutDevice.state``): pending -> offered -> downloading ..
smoke_tested [-> deferred] -> active | failed | timed_out; active -> rolling_back ->
rolled_back; pending -> cancelled when the rollout ends first; shadowing for the shadow
strategy; superseded when a newer rollout takes the device over; failed | timed_out ->
offered on an operator's ``retry``.

Precedence when two rollouts target one device: the newest rollout wins. Creating
a rollout marks the device ``superseded`` in every older draft / in_progress /
paused rollout where the device had not finished (pending or installing); those
rollouts no longer offer to it, re-offer to it or count it. A device that already
finished in an older rollout keeps that row as history. Devices are never offered
an older bundle over a newer one anyway: the agent refuses a lower release.

Offline devices: offers go out with MQTT QoS 1 to a persistent session, so a device
gets them when it returns; when it comes back online the control plane re-offers
anything still unfinished in an ``in_progress`` rollout. A wave does not wait for
offline devices; the last wave waits for them (``phase`` = ``waiting_offline``)
before the rollout is ``complete``, unless an operator aborts it.

Deferral: a device whose application holds the update lock, or that is outside the
rollout's ``maintenance_window`` (or, when the rollout has none, its groups' window;
sent in every offer, ``outbox.device_offer``), stages
and reports ``deferred`` with the reason. It is still installing: the wave waits for it
and its deadlines keep running.

Atomic rollouts (``atomic``): devices stage and report ``armed``; once the quorum is
armed a signed switch order switches them all at one moment; if staging fails beyond
the quorum every device drops what it staged and the rollout fails.

Deadlines (``deadlines``): an online device has ``install_timeout_s`` from its offer,
and its wave's ``wave_timeout_s`` at most, before it is ``timed_out``; an offline
device's clock stands still and it is never timed out while offline: when it comes
back its remaining time continues, or, past its wave's deadline, it is timed out then.
"""
