"""Waiting for a web explorer job (studies, circuits, evaluations) in tests that drive the API."""

from __future__ import annotations

import time


def wait_job(client, job_id, timeout: float = 120) -> dict:
    """Poll ``/api/jobs/{job_id}`` until it is done, cancelled or failed; its last state."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = client.get(f"/api/jobs/{job_id}").json()
        if state["status"] in ("done", "cancelled", "error"):
            return state
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not finish in {timeout} s")
