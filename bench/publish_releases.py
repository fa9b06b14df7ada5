"""What publishing owner-signed releases costs the controller every cycle.

Builds (or reuses from the cached store) vibration-anomaly 1.0.0 for arm-cortex-a-cpu, releases N copies of it
as distinct versions, then measures the controller's Publisher: the first sync (verify every release, publish one
TUF targets version), an idle sync (nothing new: a directory scan and cached verdicts), and a sync after one new
release. The baseline, in the same run, is verifying the N folders alone with verify_artifact.

    python bench/publish_releases.py [N]        # default N = 200
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from reconciler.optimize.pipeline import build_scope
from reconciler.artifact.store import ArtifactStore
from reconciler.controller.publish import Publisher
from reconciler.gitops.files import read_fleet_dir
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
from reconciler.api import load_fleet

ROOT = Path(__file__).resolve().parents[1]
STORE = Path.home() / ".cache" / "edge-reconciler" / "demo-store"


def main(count: int) -> None:
    tree = load_fleet(read_fleet_dir(ROOT / "fleet-example"))
    store = ArtifactStore(STORE)
    [result] = build_scope(tree, ROOT / "fleet-example", store, models=["vibration-anomaly"], versions=["1.0.0"],
                           profiles=["arm-cortex-a-cpu"])  # fmt: skip
    assert result.artifact is not None, result.error
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
        for folder in sorted(releases.iterdir()):
            verify_artifact(folder, policy, Expectation("vibration-anomaly"))
        verify_only = time.perf_counter() - start

        publisher = Publisher(releases, create_repository(work / "tuf", work / "keys" / "tuf", utcnow()),
                              online_signers(work / "keys" / "tuf"))  # fmt: skip
        first = timed(lambda: publisher.sync(policy, utcnow()))
        idle = min(timed(lambda: publisher.sync(policy, utcnow())) for _ in range(5))
        make_release(source, releases / "new", f"1.1.{count}", count + 1, owner.private)
        one_more = timed(lambda: publisher.sync(policy, utcnow()))
        newest = max((work / "tuf" / "metadata").glob("*.targets.json"), key=lambda p: int(p.name.split(".")[0]))
        targets = json.loads(newest.read_bytes())
        size = sum(p.stat().st_size for p in (work / "tuf" / "metadata").glob("*.targets.json"))
    print(f"{count} releases of a {artifact_kib:.0f} KiB artifact")
    print(f"  verify alone (baseline): {verify_only:8.3f} s  ({verify_only / count * 1000:.2f} ms each)")
    print(f"  first sync:              {first:8.3f} s  ({first / verify_only:.2f}x the baseline: verify + publish)")
    print(f"  idle sync:               {idle * 1000:8.2f} ms ({idle / verify_only:.4f}x the baseline)")
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


def timed(action) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 200)
