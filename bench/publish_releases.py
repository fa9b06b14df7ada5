"""What publishing owner-signed releases costs the controller every cycle.

Builds (or reuses from the cached store) vibration-anomaly 1.0.0 for arm-cortex-a-cpu, releases N copies of it
as distinct versions, then measures the controller's Publisher: the first sync (verify every release, publish one
TUF targets version), an idle sync (nothing new: a directory scan and cached verdicts), and a sync after one new
release. The baseline, in the same run, is verifying the N folders alone with verify_artifact.

    python bench/publish_releases.py [N] [--quick]        # default N = 200; --quick: N = 5
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path

from _check import parser, ratio, require

from reconciler.api import load_fleet
from reconciler.artifact.store import ArtifactStore
from reconciler.controller.publish import Publisher, PublishOutcome
from reconciler.gitops.files import read_fleet_dir
from reconciler.optimize.pipeline import build_scope
from reconciler.signing import (
    Expectation,
    Release,
    ReleaseSigner,
    TrustPolicy,
    generate_key,
    sign_with_key,
    verify_artifact,
    write_release,
)
from reconciler.signing.tuf_repo import create_repository, online_signers, utcnow

ROOT = Path(__file__).resolve().parents[1]
STORE = Path.home() / ".cache" / "edge-reconciler" / "demo-store"


def main(count: int, quick: bool) -> None:
    require(count > 0, "no releases: there would be nothing to verify or publish")
    tree = load_fleet(read_fleet_dir(ROOT / "fleet-example"))
    store = ArtifactStore(STORE)
    [result] = build_scope(tree, ROOT / "fleet-example", store, models=["vibration-anomaly"], versions=["1.0.0"],
                           profiles=["arm-cortex-a-cpu"])  # fmt: skip
    require(result.artifact is not None, f"vibration-anomaly 1.0.0 did not build: {result.error}")
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        owner = generate_key(work / "keys" / "owner")
        source = store.export(result.artifact.id, work / "built")
        artifact_kib = sum(f.stat().st_size for f in source.iterdir()) / 1024
        releases = work / "releases"
        for index in range(count):
            make_release(source, releases / f"r{index:04d}", f"1.0.{index}", index + 1, owner.private)
        policy = TrustPolicy((ReleaseSigner("owner", public_key=owner.public),))
        start = time.perf_counter()
        verified = [verify_artifact(folder, policy, Expectation("vibration-anomaly"))
                    for folder in sorted(releases.iterdir())]  # fmt: skip
        verify_only = time.perf_counter() - start
        require(len(verified) == count, f"the baseline verified {len(verified)} of {count} releases")

        publisher = Publisher(releases, create_repository(work / "tuf", work / "keys" / "tuf", utcnow()),
                              online_signers(work / "keys" / "tuf"))  # fmt: skip
        first, outcome = timed(lambda: publisher.sync(policy, utcnow()))
        published(outcome, count, "the first sync", signs=True)
        idle_runs = [timed(lambda: publisher.sync(policy, utcnow())) for _ in range(2 if quick else 5)]
        idle = min(seconds for seconds, _ in idle_runs)
        for _, outcome in idle_runs:
            published(outcome, count, "an idle sync", signs=False)
        make_release(source, releases / "new", f"1.1.{count}", count + 1, owner.private)
        one_more, outcome = timed(lambda: publisher.sync(policy, utcnow()))
        published(outcome, count + 1, "the sync after one release", signs=True)
        newest = max((work / "tuf" / "metadata").glob("*.targets.json"), key=lambda p: int(p.name.split(".")[0]))
        targets = json.loads(newest.read_bytes())
        size = sum(p.stat().st_size for p in (work / "tuf" / "metadata").glob("*.targets.json"))
        per_release = len(list(source.iterdir())) + 2  # the artifact's files, release.json and release.sig
        listed = len(targets["signed"]["targets"])
        require(listed == (count + 1) * per_release, f"the newest targets list {listed} files, not "
                                                     f"{count + 1} releases x {per_release}")  # fmt: skip
    print(f"{count} releases of a {artifact_kib:.0f} KiB artifact")
    print(f"  verify alone (baseline): {verify_only:8.3f} s  ({verify_only / count * 1000:.2f} ms each)")
    first_ratio, idle_ratio = ratio(first, verify_only, "first sync/verify"), ratio(idle, verify_only, "idle/verify")
    print(f"  first sync:              {first:8.3f} s  ({first_ratio:.2f}x the baseline: verify + publish)")
    print(f"  idle sync:               {idle * 1000:8.2f} ms ({idle_ratio:.4f}x the baseline)")
    print(f"  sync after one release:  {one_more * 1000:8.2f} ms (one verification, one new targets version)")
    print(f"  targets metadata: {len(targets['signed']['targets'])} files listed in the newest version; "
          f"all versions together {size / 1024:.0f} KiB")  # fmt: skip


def make_release(source: Path, folder: Path, version: str, counter: int, key: Path) -> None:
    shutil.copytree(source, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["version"] = version
    (folder / "manifest.json").write_text(json.dumps(manifest, sort_keys=True))
    write_release(folder, Release("vibration-anomaly", version, ("arm-cortex-a-cpu",), counter))
    sign_with_key(folder, key)


def published(outcome: PublishOutcome, count: int, what: str, signs: bool) -> None:
    """A sync that refused a release, signed nothing new when something changed, or signed when nothing did,
    timed something else than what its line names."""
    reasons = list(outcome.refused.values())
    require(not reasons, f"{what} refused {len(reasons)} releases, first: {reasons[:1]}")
    require(len(outcome.artifacts) == count, f"{what} lists {len(outcome.artifacts)} of {count} releases")
    signed = outcome.targets_version is not None
    require(signed == signs, f"{what} signed {'a' if signed else 'no'} new targets version")


def timed(action):
    start = time.perf_counter()
    value = action()
    return time.perf_counter() - start, value


if __name__ == "__main__":
    arguments = parser(__doc__)
    arguments.add_argument("releases", type=int, nargs="?", help="releases to publish (default 200; 5 with --quick)")
    args = arguments.parse_args()
    main(args.releases if args.releases is not None else 5 if args.quick else 200, args.quick)
