"""``edgectl simulate``: a real controller and rollout, N simulated devices over the real device API.

Thin: options in, :class:`reconciler.simulate.scenario.Scenario` does the rest; the result is one JSON object on
stdout (progress goes to stderr).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click


def _share(name: str, help_text: str):
    return click.option(f"--{name}", type=click.FloatRange(0, 1), default=0.0, show_default=True, help=help_text)


@click.command()
@click.option("--devices", type=click.IntRange(1, 1_000_000), default=1000, show_default=True)
@click.option("--processes", type=click.IntRange(1, 64), default=2, show_default=True,
              help="Worker processes the devices are spread over (one asyncio loop each).")  # fmt: skip
@click.option("--device-api-processes", type=click.IntRange(1, 64),
              help="The controller's device API processes (edgectl run --device-api-processes; default 2, and 1 "
                   "with --backend kubernetes, which has one).")  # fmt: skip
@_share("offline", "Share of devices that go offline for periods.")
@click.option("--offline-seconds", type=click.FloatRange(0), default=90.0, show_default=True,
              help="Mean length of an offline period.")  # fmt: skip
@_share("flaky", "Share of devices whose downloads are cut part-way (and resumed with Range).")
@_share("bandwidth", "Share of devices behind a bandwidth cap.")
@click.option("--bandwidth-bytes", type=click.IntRange(1000), default=200_000, show_default=True,
              help="The cap, in bytes a second.")  # fmt: skip
@_share("slow", "Share of slow devices (install, test and inference take 5 times as long).")
@_share("crash", "Share of devices that crash once mid-install and restart.")
@_share("skew", "Share of devices whose clock is off by up to an hour.")
@_share("churn", "Share of devices that join late or leave during the run.")
@click.option("--steps", default="2,25", show_default=True, help="Percents of the first two steps (the third is 100).")
@click.option("--pause", type=click.IntRange(0), default=60, show_default=True, help="Seconds of each step's pause.")
@click.option("--trial", type=click.IntRange(1), default=30, show_default=True, help="Seconds of a device's trial.")
@click.option("--poll", type=click.FloatRange(1), default=30.0, show_default=True,
              help="Seconds between a device's polls.")  # fmt: skip
@click.option("--interval", type=click.FloatRange(0.5), default=5.0, show_default=True,
              help="The controller's reconcile interval.")  # fmt: skip
@click.option("--defect/--no-defect", default=True, show_default=True,
              help="After the rollout, merge a defective release that must abort.")  # fmt: skip
@click.option("--defect-rate", type=click.FloatRange(0, 1), default=1.0, show_default=True,
              help="Share of the devices whose health check the defective release fails.")  # fmt: skip
@click.option("--enrol", type=click.Choice(["token", "issued"]), default="token", show_default=True,
              help="token: each device enrols through the device API; issued: certificates made before the start "
              "(large fleets).")  # fmt: skip
@click.option("--no-downloads", is_flag=True, help="Report the phases without fetching bytes (large fleets).")
@click.option("--verify-share", type=click.FloatRange(0, 1), default=0.01, show_default=True,
              help="Share of devices doing the full TUF and signature checks themselves.")  # fmt: skip
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--timeout", type=click.FloatRange(10), default=1800.0, show_default=True,
              help="Seconds each rollout may take.")  # fmt: skip
@click.option("--plot", type=click.Path(dir_okay=False, path_type=Path), help="Draw devices per phase over time (PNG).")
@click.option("--fleet-example", "example", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="The example fleet to start from (default: ./fleet-example).")  # fmt: skip
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path),
              help="Where to leave the repo, state, logs and result (default: a new temporary directory).")  # fmt: skip
@click.option("--backend", type=click.Choice(["local", "kubernetes"]), default="local", show_default=True,
              help="kubernetes: the controller keeps the fleet on an API server, where each device is a Node object "
              "(made at the start, removed at the end).")  # fmt: skip
@click.option("--kubeconfig", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Kubernetes backend: the API server's kubeconfig (required).")  # fmt: skip
@click.option("--namespace", "-n", default="edge-simulate", show_default=True,
              help="Kubernetes backend: a namespace holding none of the controller's objects; the run's objects are "
              "removed from it at the end.")  # fmt: skip
def simulate(devices: int, processes: int, device_api_processes: int | None, offline: float, offline_seconds: float,
             flaky: float, bandwidth: float,
             bandwidth_bytes: int, slow: float, crash: float, skew: float, churn: float, steps: str, pause: int,
             trial: int, poll: float, interval: float, defect: bool, defect_rate: float, enrol: str,
             no_downloads: bool, verify_share: float,
             seed: int, timeout: float, plot: Path | None, example: Path | None,
             workdir: Path | None, backend: str, kubeconfig: Path | None, namespace: str) -> None:  # fmt: skip
    """Roll out to N simulated devices over the real device API; print the figures as JSON."""
    from reconciler.demo import DemoError, example_fleet
    from reconciler.simulate.faults import Faults
    from reconciler.simulate.scenario import Cluster, Scenario, ScenarioConfig, ScenarioError

    try:
        first, second = (int(p) for p in steps.split(","))
        if not 0 < first < second < 100:
            raise ValueError
    except ValueError:
        raise click.BadParameter("two rising percents below 100, e.g. 2,25", param_hint="--steps") from None
    try:
        faults = Faults(offline=offline, offline_seconds=offline_seconds, flaky=flaky, bandwidth=bandwidth,
                        bandwidth_bytes=bandwidth_bytes, slow=slow, crash=crash, skew=skew, churn=churn)  # fmt: skip
        example = example or example_fleet()
    except (ValueError, DemoError) as exc:
        raise click.UsageError(str(exc)) from None
    if backend == "kubernetes" and kubeconfig is None:
        raise click.UsageError("--backend kubernetes needs --kubeconfig (the simulator makes and removes Nodes: it "
                               "never picks a cluster by default)")  # fmt: skip
    if backend == "local" and kubeconfig is not None:
        raise click.UsageError("--kubeconfig is for --backend kubernetes")
    if backend == "kubernetes" and (device_api_processes or 1) > 1:
        raise click.UsageError("--device-api-processes is for --backend local (edgectl run serves the device API "
                               "from one process beside a Kubernetes backend)")  # fmt: skip
    config = ScenarioConfig(devices=devices, processes=processes, device_api_processes=device_api_processes or
                            (2 if backend == "local" else 1), faults=faults, seed=seed, steps=(first, second),
                            pause_seconds=pause, trial_seconds=trial, poll_seconds=poll, controller_interval=interval,
                            defect=defect, defect_rate=defect_rate, verify_share=verify_share, enrol=enrol,
                            downloads=not no_downloads, timeout_seconds=timeout,
                            cluster=Cluster(kubeconfig, namespace) if kubeconfig is not None else None)  # fmt: skip
    scenario = Scenario(config, workdir, example, say=lambda text: click.echo(text, err=True))
    click.echo(f"simulating in {scenario.workdir}", err=True)
    try:
        result = scenario.run()
    except (ScenarioError, DemoError) as exc:
        raise click.ClickException(str(exc)) from None
    if plot is not None:
        from reconciler.simulate.plot import PlotError, draw

        try:
            result["plot"] = str(draw(result, plot))
        except PlotError as exc:
            raise click.ClickException(str(exc)) from None
    json.dump(result, sys.stdout, indent=2)
    sys.stdout.write("\n")
