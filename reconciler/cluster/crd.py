"""The ``ModelAssignment`` custom resource: one per device (Node) and model.

The controller owns ``spec`` (server-side apply, field manager ``edge-reconciler``); the agent on the node
owns ``status`` (the status subresource). Printer columns and the ``edge`` category make
``kubectl get edge`` and ``kubectl get modelassignments`` useful without edgectl. The Helm chart ships
the same definition (``edgectl crds`` prints it).
"""

from __future__ import annotations

from typing import Any

GROUP = "edgereconciler.io"
VERSION = "v1alpha1"
PLURAL = "modelassignments"
KIND = "ModelAssignment"
CRD_NAME = f"{PLURAL}.{GROUP}"

_STRING = {"type": "string"}
PHASES = ("Pending", "Downloading", "Verifying", "Installing", "Testing", "Staged", "Trial", "Healthy", "Retrying",
          "Failed", "RolledBack", "Benchmarking", "Benchmarked")  # fmt: skip
"""An assignment's phases as agents report them (``reconciler.agent.phases``); only Healthy counts as a success
for a rollout, only Failed and RolledBack as a failure. Staged: downloaded, verified and tested in the inactive
slot, waiting for the maintenance window. Trial: switched, not yet marked good. Retrying: a transient failure.
Benchmarking, Benchmarked: a lab device measuring a version it never serves (``spec.benchmark``)."""

MODEL_ASSIGNMENT_CRD: dict[str, Any] = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": CRD_NAME},
    "spec": {
        "group": GROUP,
        "scope": "Namespaced",
        "names": {
            "plural": PLURAL,
            "singular": "modelassignment",
            "kind": KIND,
            "shortNames": ["ma"],
            "categories": ["edge"],
        },
        "versions": [
            {
                "name": VERSION,
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "additionalPrinterColumns": [
                    {"name": "Device", "type": "string", "jsonPath": ".spec.device"},
                    {"name": "Model", "type": "string", "jsonPath": ".spec.model"},
                    {"name": "Version", "type": "string", "jsonPath": ".spec.version"},
                    {"name": "Installed", "type": "string", "jsonPath": ".status.installedVersion"},
                    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
                    {"name": "Rollout", "type": "string", "jsonPath": ".spec.rollout", "priority": 1},
                    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                ],
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "description": "The model version one device should run; written by the controller.",
                        "properties": {
                            "spec": {
                                "type": "object",
                                "required": ["device", "model", "version", "profile", "rollout"],
                                "properties": {
                                    "device": _STRING,
                                    "model": _STRING,
                                    "version": _STRING,
                                    "profile": _STRING,
                                    "rollout": _STRING,
                                    "artifact": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
                                    "inRollout": {"type": "boolean"},
                                    "benchmark": {
                                        "type": "boolean",
                                        "description": "A lab device: benchmark the "
                                        "version and report the figures, never serve it.",
                                    },
                                    "capture": {
                                        "type": "object",
                                        "description": "Sampled input capture of the model (its monitoring.capture).",
                                        "properties": {
                                            "rate": {"type": "number", "minimum": 0, "maximum": 0.05},
                                            "maxBytes": {"type": "integer", "minimum": 0},
                                            "redaction": {"type": "string", "enum": ["none", "required"]},
                                        },
                                    },
                                    "debug": {
                                        "type": "object",
                                        "description": "A log level the agent takes until a moment, then "
                                        "drops by its own clock.",
                                        "properties": {
                                            "level": {"type": "string", "enum": ["debug", "info", "warning"]},
                                            "until": {"type": "string", "format": "date-time"},
                                        },
                                    },
                                    "training": {
                                        "type": "object",
                                        "description": "A federated training the device may take part in.",
                                        "properties": {
                                            "name": _STRING,
                                            "superlink": _STRING,
                                            "data": {"type": "string", "enum": ["local", "capture"]},
                                            "path": _STRING,
                                            "minSamples": {"type": "integer", "minimum": 1},
                                            "trainer": {"type": "string", "enum": ["head", "keras"]},
                                        },
                                    },
                                    "trial": {
                                        "type": "object",
                                        "description": "How the device tries the version after switching.",
                                        "properties": {
                                            "seconds": {"type": "integer", "minimum": 0},
                                            "requests": {"type": "integer", "minimum": 1},
                                            "maxErrorRate": {"type": "number", "minimum": 0, "maximum": 1},
                                        },
                                    },
                                    "window": {
                                        "type": "object",
                                        "description": "When the device may switch, in its own time zone.",
                                        "properties": {
                                            "days": {"type": "array", "items": _STRING},
                                            "start": _STRING,
                                            "end": _STRING,
                                            "timezone": _STRING,
                                        },
                                    },
                                },
                            },
                            "status": {
                                "type": "object",
                                "x-kubernetes-preserve-unknown-fields": True,
                                "properties": {
                                    "phase": {"type": "string", "enum": list(PHASES)},
                                    "installedVersion": _STRING,
                                    "previousVersion": _STRING,
                                    "message": _STRING,
                                    "reason": _STRING,
                                    "lastSeen": {"type": "string", "format": "date-time"},
                                    "observedGeneration": {"type": "integer"},
                                },
                            },
                        },
                    }
                },
            }
        ],
    },
}


def assignment_name(device: str, model: str) -> str:
    """Object name: ``DEVICE.MODEL`` (both are DNS names already, so the result is a valid object name)."""
    return f"{device}.{model}"


ROLLOUT_PLURAL = "fleetrollouts"
ROLLOUT_KIND = "FleetRollout"
ROLLOUT_CRD_NAME = f"{ROLLOUT_PLURAL}.{GROUP}"

FLEET_ROLLOUT_CRD: dict[str, Any] = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": ROLLOUT_CRD_NAME},
    "spec": {
        "group": GROUP,
        "scope": "Namespaced",
        "names": {
            "plural": ROLLOUT_PLURAL,
            "singular": "fleetrollout",
            "kind": ROLLOUT_KIND,
            "shortNames": ["frol"],
            "categories": ["edge"],
        },
        "versions": [
            {
                "name": VERSION,
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "additionalPrinterColumns": [
                    {"name": "Model", "type": "string", "jsonPath": ".status.model"},
                    {"name": "Version", "type": "string", "jsonPath": ".status.version"},
                    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
                    {"name": "Step", "type": "integer", "jsonPath": ".status.step"},
                    {"name": "Ready", "type": "string", "jsonPath": ".status.ready"},
                    {"name": "Reason", "type": "string", "jsonPath": ".status.reason", "priority": 1},
                    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                ],
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "description": "Where a rollout stands, as the controller keeps it: the authority over "
                        "device assignments (the status file in Git is rendered from it).",
                        "properties": {
                            "spec": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                            "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                        },
                    }
                },
            }
        ],
    },
}
"""The controller's record of each rollout (``kubectl get edge``), in the status subresource: where it stands,
whether the status commit that shows it landed in Git, a rollback commit still to push, the generation it saw.
The spec only names the rollout's model and version. Only the controller may write the status (RBAC on
``fleetrollouts/status``); the status file in Git is the audit trail rendered from it, and a file changed by
someone else is restored, not obeyed."""


DEVICE_PLURAL = "edgedevices"
DEVICE_KIND = "EdgeDevice"
TOKEN_PLURAL = "devicetokens"
TOKEN_KIND = "DeviceToken"


def _identity_crd(plural: str, kind: str, short: str, description: str, columns: list[dict[str, Any]],
                  properties: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "plural": plural,
                "singular": kind.lower(),
                "kind": kind,
                "shortNames": [short],
                "categories": ["edge"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "additionalPrinterColumns": [
                        *columns,
                        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                    ],
                    "schema": {
                        "openAPIV3Schema": {"type": "object", "description": description, "properties": properties}
                    },
                }
            ],
        },
    }


_LABELS = {"type": "object", "additionalProperties": _STRING}
EDGE_DEVICE_CRD: dict[str, Any] = _identity_crd(
    DEVICE_PLURAL, DEVICE_KIND, "edev",
    "A device's identity as the device API knows it: its current client certificate and whether it is revoked. "
    "Written by the controller's device API (every replica); `edgectl device revoke` sets status.revokedAt.",
    [
        {"name": "Serial", "type": "string", "jsonPath": ".status.serial", "priority": 1},
        {"name": "Cert-Expires", "type": "date", "jsonPath": ".status.notAfter"},
        {"name": "Revoked", "type": "date", "jsonPath": ".status.revokedAt"},
    ],
    {
        "spec": {"type": "object", "properties": {"labels": _LABELS}},
        "status": {
            "type": "object",
            "properties": {
                "enrolledAt": {"type": "string", "format": "date-time"},
                "serial": {"type": "string", "pattern": "^[0-9a-f]+$"},
                "previousSerial": {"type": "string", "pattern": "^[0-9a-f]+$"},
                "notAfter": {"type": "string", "format": "date-time"},
                "issuedAt": _STRING,
                "revokedAt": {"type": "string", "format": "date-time"},
            },
        },
    },
)  # fmt: skip
"""No status subresource: every write replaces the whole object under its resourceVersion (compare-and-swap), so
two replicas rotating one device's certificate cannot both win."""

DEVICE_TOKEN_CRD: dict[str, Any] = _identity_crd(
    TOKEN_PLURAL, TOKEN_KIND, "dtok",
    "A one-time bootstrap token (`edgectl device token create`). Only the SHA-256 of its secret is stored: this "
    "object is no credential.",
    [
        {"name": "Device", "type": "string", "jsonPath": ".spec.device"},
        {"name": "Expires", "type": "date", "jsonPath": ".spec.expiresAt"},
        {"name": "Used-By", "type": "string", "jsonPath": ".status.usedBy"},
    ],
    {
        "spec": {
            "type": "object",
            "required": ["secretSha256", "expiresAt"],
            "properties": {
                "secretSha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
                "device": _STRING,
                "labels": _LABELS,
                "createdAt": {"type": "string", "format": "date-time"},
                "expiresAt": {"type": "string", "format": "date-time"},
            },
        },
        "status": {
            "type": "object",
            "properties": {"usedAt": {"type": "string", "format": "date-time"}, "usedBy": _STRING},
        },
    },
)  # fmt: skip

ALL_CRDS: tuple[dict[str, Any], ...] = (MODEL_ASSIGNMENT_CRD, FLEET_ROLLOUT_CRD, EDGE_DEVICE_CRD, DEVICE_TOKEN_CRD)
"""What ``KubernetesBackend.install`` applies and the chart's ``crds/`` holds."""
