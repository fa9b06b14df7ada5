"""Sign and verify cost of artifacts, and the trust metadata they carry.

Prints, for every artifact of fleet-example and for a ~100 MB ResNet-50 (the onnx wheel's light model with
folded weights), the time to sign (hash + ECDSA P-256 bundle) and to verify (layout, signature, re-hash,
statements), against the baseline of hashing the same files with hashlib in the same run. Then the bytes of
trust metadata per artifact: the release statement, the signature bundle, and its share of TUF targets.

    python bench/sign_verify.py            # builds fleet-example into a cached store first (~40 s cold)
    python bench/sign_verify.py --quick    # vibration-anomaly for arm-cortex-a-cpu only, one run each
"""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from _check import parser, ratio, require

from reconciler.api import load_fleet
from reconciler.artifact.store import ArtifactStore
from reconciler.gitops.files import read_fleet_dir
from reconciler.optimize.pipeline import build_scope
from reconciler.signing import (
    Expectation,
    Release,
    ReleaseSigner,
    TrustPolicy,
    generate_key,
    load_public_key,
    sign_with_key,
    tuf_key,
    tuf_signer,
    verify_artifact,
    write_release,
)
from reconciler.signing.tuf_repo import OnlineSigners, RoleKeys, TufRepository, target_path

ROOT = Path(__file__).resolve().parents[1]
STORE = Path.home() / ".cache" / "edge-reconciler" / "bench-store"
sys.path.insert(0, str(ROOT / "bench"))


def best_of(runs: int, call) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return min(times)


def hash_all(directory: Path) -> int:
    hashed = 0
    for path in directory.iterdir():
        with path.open("rb") as handle:
            hashlib.file_digest(handle, "sha256")
        hashed += path.stat().st_size
    return hashed


def measure(label: str, directory: Path, key, policy: TrustPolicy, manifest: dict, runs: int) -> dict:
    write_release(directory, Release(manifest["model"], manifest["version"], (manifest["profile"],), 1))
    size = sum(p.stat().st_size for p in directory.iterdir() if p.name not in ("release.sig", "release.json"))
    require(hash_all(directory) >= size > 0, f"{label}: nothing to hash, sign or verify in {directory}")
    baseline = best_of(runs, lambda: hash_all(directory))
    sign_s = best_of(runs, lambda: sign_with_key(directory, key.private))
    expect = Expectation(manifest["model"], manifest["version"], manifest["profile"])
    verify_s = best_of(runs, lambda: verify_artifact(directory, policy, expect))
    verified = verify_artifact(directory, policy, expect)
    require(set(manifest["files"]) <= set(verified.digests), f"{label}: the signature does not cover every file")
    overhead = (directory / "release.sig").stat().st_size + (directory / "release.json").stat().st_size
    print(
        f"  {label:<46} {size / 1e6:8.2f} MB  sha256 {baseline * 1e3:8.1f} ms  sign {sign_s * 1e3:8.1f} ms"
        f" ({ratio(sign_s, baseline, f'{label} sign/sha256'):4.1f}x)  verify {verify_s * 1e3:8.1f} ms"
        f" ({ratio(verify_s, baseline, f'{label} verify/sha256'):4.1f}x)  release.sig+json {overhead} B"
    )
    return {"overhead": overhead}


def main() -> None:
    args = parser(__doc__).parse_args()
    runs, resnet_runs = (1, 1) if args.quick else (5, 3)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        key = generate_key(work / "owner")
        policy = TrustPolicy((ReleaseSigner("owner", public_key=key.public),))
        store = ArtifactStore(STORE)
        tree = load_fleet(read_fleet_dir(ROOT / "fleet-example"))
        models, profiles = (["vibration-anomaly"], ["arm-cortex-a-cpu"]) if args.quick else (list(tree.models), None)
        builds = build_scope(tree, ROOT / "fleet-example", store, models=models, profiles=profiles)
        built = [b for b in builds if b.artifact]
        require(built, f"no artifact of fleet-example built: {[b.error for b in builds][:3]}")
        print(f"fleet-example: {len(built)} artifacts (best of {runs} runs)")
        folders = []
        overheads = []
        for build in built:
            folder = store.export(build.artifact.id, work / build.artifact.id)
            manifest = json.loads((folder / "manifest.json").read_text())
            label = f"{build.model}@{build.version} {build.profile}"
            overheads.append(measure(label, folder, key, policy, manifest, runs=runs)["overhead"])
            folders.append((folder, manifest))

        from build_matrix import folded_resnet50

        resnet = work / "resnet"
        resnet.mkdir()
        payload = folded_resnet50()
        (resnet / "model.onnx").write_bytes(payload)
        files = {"model.onnx": {"sha256": hashlib.sha256(payload).hexdigest(), "size": len(payload)}}
        manifest = {"model": "resnet50", "version": "1.0.0", "profile": "arm-cortex-a-cpu", "files": files}
        (resnet / "manifest.json").write_text(json.dumps(manifest))
        print(f"ResNet-50-light, folded (best of {resnet_runs} runs)")
        measure("resnet50@1.0.0 arm-cortex-a-cpu", resnet, key, policy, manifest, runs=resnet_runs)

        # TUF: what the targets metadata costs per artifact (4 files each), once everything is published.
        role_keys = {role: generate_key(work / role) for role in ("root", "targets", "snapshot", "timestamp")}
        keys = {role: [tuf_key(load_public_key(pair.public))] for role, pair in role_keys.items()}
        repo = TufRepository(work / "tuf")
        now = datetime.now(UTC).replace(microsecond=0)
        repo.initialize(RoleKeys(keys), [tuf_signer(role_keys["root"].private)], now)
        files = {
            target_path(m["model"], m["version"], m["profile"], f.name): f
            for folder, m in folders
            for f in folder.iterdir()
        }
        online = OnlineSigners([tuf_signer(role_keys["targets"].private)], tuf_signer(role_keys["snapshot"].private),
                               tuf_signer(role_keys["timestamp"].private))  # fmt: skip
        start = time.perf_counter()
        version = repo.publish(files, online, now)
        publish_s = time.perf_counter() - start
        require(version is not None and len(repo.published()) == len(files), f"publishing {len(files)} targets "
                f"signed version {version} listing {len(repo.published())}")  # fmt: skip
        targets_bytes = (repo.metadata_dir / f"{version}.targets.json").stat().st_size
        fixed = sum((repo.metadata_dir / n).stat().st_size for n in ("1.snapshot.json", "timestamp.json"))
        print("Trust metadata per artifact")
        print(f"  release.sig + release.json     {sum(overheads) / len(overheads):8.0f} B (mean of {len(overheads)})")
        per_artifact = targets_bytes / len(folders)
        print(f"  TUF targets entries            {per_artifact:8.0f} B ({targets_bytes} B for {len(folders)})")
        print(f"  TUF snapshot + timestamp       {fixed:8d} B per publish (not per artifact)")
        print(f"  publish {len(files)} targets          {publish_s * 1e3:8.1f} ms")


if __name__ == "__main__":
    main()
