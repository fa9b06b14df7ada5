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
PHASES = ("Pending", "Downloading", "Verifying", "Installing", "Testing", "Staged", "Healthy", "Failed", "RolledBack")
"""An assignment's phases as agents report them; only Healthy counts as a success for a rollout. Staged: the
new version is downloaded, verified and tested in the inactive slot, waiting for the maintenance window."""

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
                "additionalPrinterColumns": [
                    {"name": "Model", "type": "string", "jsonPath": ".spec.model"},
                    {"name": "Version", "type": "string", "jsonPath": ".spec.version"},
                    {"name": "Phase", "type": "string", "jsonPath": ".spec.phase"},
                    {"name": "Step", "type": "integer", "jsonPath": ".spec.currentStep"},
                    {"name": "Ready", "type": "string", "jsonPath": ".spec.ready"},
                    {"name": "Reason", "type": "string", "jsonPath": ".spec.reason", "priority": 1},
                    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                ],
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "description": "A read-only mirror of a rollout's status file in Git, for kubectl.",
                        "properties": {
                            "spec": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                        },
                    }
                },
            }
        ],
    },
}
"""Where kubectl reads rollouts (``kubectl get edge``). Git stays the source of truth: the controller writes
this mirror from the status file it commits, never the other way round."""
