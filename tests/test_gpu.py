"""CUDA checks: skipped where no GPU is present (CI never has one)."""

from __future__ import annotations

import pytest
import torch
from tiny import tiny_model

from homer_llm import compat
from homer_llm.engine import compress
from homer_llm.schedule import make_plan

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device; none is present"),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_cuda_pass_matches_cpu(dtype):
    cpu = tiny_model("llama", vocab=100)
    gpu = tiny_model("llama", vocab=100, dtype=dtype).cuda()
    plan = make_plan(6, 500, 5, chunk_len=128, cache_len=128, num_layers=6, warmup_layers=2)
    ids = torch.randint(5, 100, (511,), generator=torch.Generator().manual_seed(0))
    a = compress(compat.model_parts(cpu), plan, ids)
    b = compress(compat.model_parts(gpu), plan, ids)
    assert b.kv[0][0].device.type == "cuda" and b.kv[0][0].dtype == dtype
    tol = 1e-4 if dtype == torch.float32 else 5e-2
    assert torch.nn.functional.cosine_similarity(a.last_logits, b.last_logits.cpu(), dim=0) > 1 - tol


def test_float32_gqa_prefill_stays_off_the_math_kernel(tokenizer):
    """A float32 GQA model wrapped by HomerModel on CUDA is switched to sdpa on repeated K/V heads, so
    a 16k-token plain prefill needs far less than the math kernel's 4 x n x n float32 scores (4 GiB)."""
    from homer_llm import HomerModel
    from homer_llm.evaluation.runner import prefill

    model = tiny_model("llama", vocab=len(tokenizer), window=32768).cuda()
    hm = HomerModel(model, tokenizer, name="tiny-gqa-fp32")
    assert model.config._attn_implementation == compat.SDPA_REPEAT_KV
    ids = torch.randint(5, len(tokenizer), (16384,), generator=torch.Generator().manual_seed(0)).tolist()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    _, logits = prefill(hm.parts, ids, keep_kv=False)
    peak = torch.cuda.max_memory_allocated() - before
    assert torch.isfinite(logits).all()
    assert peak < 1 << 30, f"peak {peak / 2**30:.2f} GiB: the math kernel's scores would be 4 GiB"


def test_owner_mask_is_built_on_the_device_and_equals_the_host_one():
    parts = compat.model_parts(tiny_model("llama", vocab=100).cuda())
    owner = torch.tensor([-1, -1, 0, 0, 0, 1, 1, 2, -2, -2])
    host = compat.owner_mask(parts, owner, torch.bfloat16)
    device = compat.owner_mask(parts, owner.cuda(), torch.bfloat16)
    assert device.device.type == "cuda" and torch.equal(host, device.cpu())


def test_bench_rows_of_what_users_get_run_on_cuda():
    from homer_llm.bench.configs import get_shape
    from homer_llm.bench.runner import METHODS, Bench, BenchSettings

    settings = BenchSettings(shape=get_shape("tiny"), device="cuda", dtype=torch.bfloat16, lengths=(512,),
                             repeats=1, warmup=1, decode_tokens=2, matmul_size=2048)
    report = Bench(settings).run()
    assert [r.method for r in report.results] == list(METHODS)
    assert all(r.status == "ok" and r.decode_ms > 0 and r.floor_fraction > 0 for r in report.results)
    assert report.meta["homer"]["merge_attention"] == "own-leaf" and report.meta["device_type"] == "cuda"
