"""The device API: the one way a device talks to the fleet, for both backends. Always TLS; after enrolment,
mutual TLS with a client certificate from the fleet CA that names the device.

Who calls it: agents (``edgectl agent``), the fleet simulator and tests, through :mod:`.client`. Who serves it:
``edgectl run`` (:mod:`.server`, every replica; it keeps no state of its own: identities live in the
registry, assignments and reports in the backend, artifacts in the store and the TUF repository).

The protocol (JSON bodies, ``application/json``; every body is validated against :mod:`.protocol`):

    POST /v1/enrol              no client certificate: {token, csr} -> {device, certificate, ca}
    POST /v1/renew              {csr} -> {device, certificate, ca}: a fresh certificate before the old one expires
    GET  /v1/assignments        this device's assignments; ETag, If-None-Match -> 304; ?wait=S long-polls up to S s
    PUT  /v1/status/{model}     this device's report for one of its models (an AssignmentStatus)
    POST /v1/telemetry          a TelemetrySummary of this device (rate-limited per device)
    GET|HEAD /tuf/{path}        the TUF repository (metadata/ and targets/), Range
    GET|HEAD /artifacts/sha256/{hex}, /artifacts/delta/{a}/{b}       blobs and deltas of the store, Range, If-Range

The device's name comes from its certificate, never from a body or a path. A device reads only its own
assignments and writes only its own reports and telemetry; anything else is 403 with the reason, counted
(``edge_reconciler_device_api_refusals_total{reason}``) and logged with both names. Limits are enforced before a
body is read: a missing, negative or non-numeric ``Content-Length`` is 400 (411 when absent on a body method), a body
over the endpoint's limit 413.
"""
