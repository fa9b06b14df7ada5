"""FederatedTraining: devices improve a model on data that never leaves them; the result ships like any version.

Pure (no I/O). Merging one starts the training: the controller runs a Flower SuperLink beside itself, every device
of the named groups that runs the base version and holds labeled data starts a SuperNode, and each round a sample
of them trains locally and sends its update, summed under secure aggregation (SecAgg+) so the controller only
ever sees the sum. After the last round the controller pushes a branch that adds the new version to the Model,
with its lineage; a person merges it, and the version is built, signed, lab-tested and canaried like any other.
Nothing reaches the fleet through the training itself.
"""

from __future__ import annotations

from datetime import timedelta
from typing import ClassVar, Literal

from pydantic import Field

from .document import Document, Problem
from .types import Duration, Name, QuotedStr, SpecModel


class TrainingData(SpecModel):
    """Where a device finds its labeled examples (docs/federated.md: the file format)."""

    source: Literal["local", "capture"] = "local"
    """local: ``.npz`` files (``x``, ``y``) under ``path`` on the device, labeled by whoever put them there;
    capture: the rows the model's input capture kept on the device, labeled with the served version's own
    predictions (self-training: it sharpens a model on its own traffic, it cannot correct its mistakes)."""
    path: QuotedStr = Field(default="training", pattern=r"^[A-Za-z0-9._/-]{1,200}$")
    """local: a folder under the agent's state directory (relative, without ``..``): the fleet repo never points an
    agent at any other folder."""
    min_samples: int = Field(default=20, ge=1, le=10_000_000)
    """Devices with fewer labeled rows take no part (and are never sampled)."""


class SecureAggregation(SpecModel):
    """SecAgg+ (Bell et al. 2020): each update is masked with pairwise secrets shared among a few neighbours, so
    the server learns only the sum; a dropped device's masks are rebuilt from its neighbours' shares."""

    enabled: bool = True
    shares: int | None = Field(default=None, ge=3, le=255)
    """Neighbours each device shares its secrets with (odd). Unset: every sampled device (full SecAgg)."""
    reconstruction_threshold: int | None = Field(default=None, ge=2, le=255)
    """Shares needed to rebuild a secret, fewer than ``shares``. Unset: just over half of them (a round survives
    nearly half of a device's neighbours dropping out; more than half of them must collude to unmask it)."""
    clipping_range: float = Field(default=8.0, gt=0.0, le=1e6)
    """Update values are clipped to +-this before they are quantized for masking."""
    quantization_range: int = Field(default=4_194_304, ge=2**10, le=2**30)
    """Integer range the clipped values are mapped to (precision of the sum)."""


class FederatedTrainingSpec(SpecModel):
    """What to train, on which devices, for how long, and how updates are protected."""

    model: Name
    base_version: QuotedStr
    """The version devices run and that training starts from."""
    version: QuotedStr = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,62}$")
    """The version the result is proposed as (a new entry of the Model's versions, on a branch; letters, digits,
    ``. _ + -``: it names the new source's folder)."""
    groups: list[Name] = Field(min_length=1)
    """DeviceGroups whose devices may take part."""
    trainer: Literal["head", "keras"] = "head"
    """head: fine-tune the classifier's last layer in numpy on features from the deployed ONNX model (any profile
    that runs ONNX); keras: train the whole Keras model (profiles that declare ``training: keras``)."""
    data: TrainingData = Field(default_factory=TrainingData)
    rounds: int = Field(default=5, ge=1, le=1000)
    clients_per_round: int = Field(default=10, ge=2, le=100_000)
    """Devices sampled each round (all that are connected when fewer)."""
    min_clients: int = Field(default=3, ge=2, le=100_000)
    """A round starts only with this many devices connected, and its sum counts only with this many updates."""
    local_epochs: int = Field(default=1, ge=1, le=1000)
    learning_rate: float = Field(default=0.1, gt=0.0, le=10.0)
    batch_size: int = Field(default=32, ge=1, le=65_536)
    secure_aggregation: SecureAggregation = Field(default_factory=SecureAggregation)
    round_timeout: Duration = timedelta(minutes=5)
    """Each exchange of a round waits this long for replies, then goes on with those it has (dropped devices are
    left out; a dead device is noticed sooner, when its heartbeats stop)."""
    join_timeout: Duration = timedelta(minutes=10)
    """The first round waits this long for ``clientsPerRound`` devices, then starts with ``minClients`` or more;
    devices that join later take part from the next round."""
    timeout: Duration = timedelta(hours=6)
    """The whole training gives up after this long (waiting for devices included)."""


class FederatedTraining(Document):
    """A federated training run of a model's base version on some device groups' local data."""

    KIND: ClassVar[str] = "FederatedTraining"
    kind: Literal["FederatedTraining"]
    spec: FederatedTrainingSpec

    def problems(self) -> list[Problem]:
        found: list[Problem] = []
        if self.spec.min_clients > self.spec.clients_per_round:
            found.append((("spec", "minClients"), f"minClients ({self.spec.min_clients}) is more than "
                                                  f"clientsPerRound ({self.spec.clients_per_round})"))  # fmt: skip
        if self.spec.version == self.spec.base_version:
            found.append((("spec", "version"), "the new version must differ from baseVersion"))
        spec = self.spec
        secagg, where = spec.secure_aggregation, ("spec", "secureAggregation")
        if secagg.shares is not None and secagg.shares % 2 == 0:
            found.append(((*where, "shares"), f"shares must be odd, not {secagg.shares} (an even number below the "
                                              "devices sampled breaks SecAgg+ on them)"))  # fmt: skip
        threshold = secagg.reconstruction_threshold
        if threshold is not None and threshold >= (secagg.shares or spec.min_clients):
            what = f"shares ({secagg.shares})" if secagg.shares else f"minClients ({spec.min_clients})"
            found.append(((*where, "reconstructionThreshold"), f"must be below {what}: a dropped device's secret "
                                                               "is rebuilt from the others' shares"))  # fmt: skip
        parts = spec.data.path.split("/")
        if spec.data.path.startswith("/") or ".." in parts:
            found.append((("spec", "data", "path"), f"{spec.data.path!r}: a folder under the agent's state directory, "
                                                    "relative and without '..'"))  # fmt: skip
        if spec.round_timeout < timedelta(seconds=1) or spec.round_timeout > spec.timeout:
            found.append((("spec", "roundTimeout"), "between 1s and the training's timeout"))
        if self.spec.trainer == "keras":
            found.append((("spec", "trainer"), "the keras trainer is not available yet: use head"))
        return found
