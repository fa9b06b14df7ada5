"""The controller publishes exactly what an owner released: verified folders become TUF targets that agents
install; foreign-signed folders are refused and never published; an unchanged set signs nothing new."""

from __future__ import annotations

import shutil
from datetime import timedelta

from reconciler.controller.publish import Publisher
from reconciler.signing import ReleaseSigner, TrustPolicy
from reconciler.signing.tuf_repo import utcnow

from ..device_fleet import MODEL, PROFILE, Fleet


def owner_policy(fleet: Fleet) -> TrustPolicy:
    return TrustPolicy((ReleaseSigner("owner", public_key=fleet.owner.public),))


def test_released_folders_are_published_and_installable(fleet: Fleet):
    releases = fleet.root / "inbox"
    releases.mkdir()
    shutil.move(fleet.release("1.0.0", 1), releases / "one")
    shutil.move(fleet.release("2.0.0", 2, key=fleet.stranger), releases / "stranger")
    publisher = Publisher(releases, fleet.repo, fleet.online)

    first = publisher.sync(owner_policy(fleet), utcnow())
    assert set(first.artifacts) == {(MODEL, "1.0.0", PROFILE)}
    assert first.targets_version is not None
    assert list(first.refused) == [str(releases / "stranger")]
    assert (
        "Untrusted" in first.refused[str(releases / "stranger")] or "key" in first.refused[str(releases / "stranger")]
    )
    published = fleet.repo.published()
    assert all(path.startswith(f"{MODEL}/1.0.0/{PROFILE}/") for path in published)
    assert f"{MODEL}/1.0.0/{PROFILE}/release.sig" in published

    # Nothing new: no new targets version, and an agent installs what was published.
    assert publisher.sync(owner_policy(fleet), utcnow()).targets_version is None
    fleet.assign("factory-1", "1.0.0")
    status = fleet.agent().cycle()[MODEL]
    assert (status.phase, status.installed_version) == ("Healthy", "1.0.0")

    # A re-release with a higher counter replaces the older one; the stranger's stays out.
    shutil.move(fleet.release("1.0.0", 3, name="again"), releases / "again")
    third = publisher.sync(owner_policy(fleet), utcnow())
    assert third.targets_version == first.targets_version + 1
    assert set(third.artifacts) == {(MODEL, "1.0.0", PROFILE)}


def test_an_aging_timestamp_is_re_signed(fleet: Fleet):
    releases = fleet.root / "inbox"
    releases.mkdir()
    publisher = Publisher(releases, fleet.repo, fleet.online)
    now = utcnow()
    publisher.sync(owner_policy(fleet), now)
    before = fleet.repo.timestamp_expires()
    publisher.sync(owner_policy(fleet), now + timedelta(hours=1))
    assert fleet.repo.timestamp_expires() == before  # still fresh: nothing signed
    publisher.sync(owner_policy(fleet), now + timedelta(hours=13))
    assert fleet.repo.timestamp_expires() > before
