"""Mosquitto authentication and authorisation, generated and driven by the control plane.

The broker is the only thing that keeps one device out of another's topics: the
control plane files whatever arrives on ``fleet/<id>/up/...`` under ``<id>``, so the
broker must guarantee that only the device authenticated as ``<id>`` publishes there,
and that a device can *subscribe* only to what it may read. Mosquitto 2.0's
``acl_file`` cannot do the second: it grants every SUBSCRIBE (``security_default.c``:
"FIXME - implement ACL subscription strings") and filters at delivery, so a device
could join the control plane's shared subscription (``$share/<group>/fleet/+/up/#``)
and the broker would hand it every other device's message, then drop it under its
read ACL: lost, though the sender got its PUBACK. The secured broker therefore runs
Mosquitto's **dynamic-security plugin** (shipped with Mosquitto ≥ 2.0), whose roles
carry ``subscribePattern`` ACLs that are checked at SUBSCRIBE: anything else is
refused with reason code 0x87 (Not authorized).

What the broker is told (``render_dynsec_config``, loaded when it starts):

* default access: nothing to publish, receive or subscribe; unsubscribe allowed;
* role ``edgefleet-control``: ``fleet/#`` to publish, receive and subscribe, and
  ``$share/+/fleet/#`` (any group name) to subscribe; every control-plane user has it;
* role ``edgefleet-admin``: ``$CONTROL/dynamic-security/#`` only; user ``cp-admin``;
* one role per device, named by its id: publish ``fleet/<id>/up/#``, receive and
  subscribe ``fleet/<id>/down/#`` and the broadcast ``fleet/all/down/#``. The plugin
  in 2.0 has no ``%u`` substitution, hence a role per device. Each device client is
  pinned to its own client id, so even on a listener without
  ``use_username_as_clientid`` a device cannot take over another's session.

A revoked device is simply absent: no client, no role, so every publish and
subscribe it tries is refused. While the broker runs, the plugin reads no file: the
control plane changes it through its MQTT API (``$CONTROL/dynamic-security/v1``),
as ``cp-admin`` (``DynsecAdmin``): on a password broker through its one listener, on
a TLS broker through a second, loopback-only listener that takes passwords (no
device has one there). ``deleteClient`` also makes
the broker close that client's live connection, which is how a revocation cuts a
live session, TLS or not.

Files in the auth directory (written atomically, 0600, owned by whoever owns the
directory: the broker's user when the control plane runs as root):

``control-plane.passwd``      the control plane's own password users (``cp-...``)
``control-plane.identities``  control-plane names that authenticate by certificate
``passwd``                    ``$7$`` hashes of control users, ``cp-admin`` and
                              password devices (the record a restart renders from)
``devices``                   enrolled, unrevoked device ids, one a line
``admin.json``                where ``cp-admin`` connects (the password listener, or
                              the TLS broker's loopback admin listener) and its
                              password
``broker.pid``                the running broker's pid (SIGHUP re-reads the CRL)
``ca.crt`` ``server.crt`` ``server.key`` ``crl.pem``
                              TLS mode: the broker's copies of what it must read,
                              so the PKI directory stays the control plane's alone

With TLS (``TlsListener``, see docs/tls.md) devices authenticate by client
certificate: ``use_identity_as_username`` makes the certificate's CN (the device id)
the username the roles are looked up by, ``use_username_as_clientid`` ties the client
id to it, and the CRL is checked on every handshake (SIGHUP re-reads it).

The package is split by concern: ``passwords`` (the ``$7$`` hashes and password
files), ``files`` (the auth directory), ``dynsec`` (the plugin's configuration and
its live API) and ``conf`` (``mosquitto.conf`` lines, reloading the broker); its
public surface is re-exported here.

Password hashes use Mosquitto's ``$7$`` format (PBKDF2-HMAC-SHA512, 12-byte salt),
which is also what the plugin stores (salt, hash and iterations as separate fields),
so a hash moves from one to the other unchanged.
"""

from edgefleet.control_plane.broker.security.conf import (
    reload_broker,
    render_password_listener,
    render_security_config,
    render_tls_listener,
)
from edgefleet.control_plane.broker.security.dynsec import (
    ADMIN_ROLE,
    ADMIN_TIMEOUT_S,
    CONTROL_ROLE,
    DYNSEC_RESPONSE_TOPIC,
    DYNSEC_TOPIC,
    DynsecAdmin,
    admin_role,
    broadcast_filter,
    control_role,
    device_client,
    device_role,
    render_dynsec_config,
    update_broker_device,
)
from edgefleet.control_plane.broker.security.files import (
    ADMIN_USER,
    CONTROL_USER_RE,
    Admin,
    BrokerAuthFiles,
    TlsListener,
    add_control_identity,
    add_control_user,
    ensure_admin,
    install_crl,
    install_tls,
    read_admin,
    read_devices,
    read_identities,
    write_auth_files,
    write_private,
)
from edgefleet.control_plane.broker.security.passwords import (
    PBKDF2_ITERATIONS,
    SALT_BYTES,
    hash_password,
    new_password,
    read_password_file,
    render_password_file,
    verify_password,
)

__all__ = [
    "ADMIN_ROLE",
    "ADMIN_TIMEOUT_S",
    "ADMIN_USER",
    "CONTROL_ROLE",
    "CONTROL_USER_RE",
    "DYNSEC_RESPONSE_TOPIC",
    "DYNSEC_TOPIC",
    "PBKDF2_ITERATIONS",
    "SALT_BYTES",
    "Admin",
    "BrokerAuthFiles",
    "DynsecAdmin",
    "TlsListener",
    "add_control_identity",
    "add_control_user",
    "admin_role",
    "broadcast_filter",
    "control_role",
    "device_client",
    "device_role",
    "ensure_admin",
    "hash_password",
    "install_crl",
    "install_tls",
    "new_password",
    "read_admin",
    "read_devices",
    "read_identities",
    "read_password_file",
    "reload_broker",
    "render_dynsec_config",
    "render_password_file",
    "render_password_listener",
    "render_security_config",
    "render_tls_listener",
    "update_broker_device",
    "verify_password",
    "write_auth_files",
    "write_private",
]
