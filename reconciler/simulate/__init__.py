"""The fleet simulator (``edgectl simulate``): many light devices over the real device API of a real controller.

A simulated device does on the wire what an agent does (enrols with a one-time token, polls its assignments with
If-None-Match, downloads the real artifact bytes with Range and resumes cut transfers, checks them, reports each
phase, uploads telemetry summaries); what it does not do is run the model: inference latency and health-check
outcomes come from a model per profile (:mod:`.faults`). Thousands of them share a few processes, one asyncio
loop each (:mod:`.worker`); :mod:`.scenario` sets up the fleet repo and the controller, commits a rollout and
measures what happens (:mod:`.results`).

It sits above ``demo`` (it reuses the demo's fleet repo, controller and releases) and below ``cli``.
"""
