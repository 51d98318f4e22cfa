"""Load (issue 7): 8 gradio_client sessions x 12 mixed requests against the real app on the embedded model.

Each session sends, in a shuffled order, 7 comparisons with random settings (any pruning method, scope, amount,
quantization mode and bit width the UI offers; one of 3 prompts x 4 seeds), 4 comparisons of 2 repeated
settings, and 1 sweep of 2 settings x 2 prompts: 96 requests, 2 denoising steps per image, through the one
queue (one model worker, as deployed). One run, then one test per property:

- zero failures, every request answered within 120 s and the whole load within LOAD_BOUND_S;
- each answer is its own request's: the spec echoed in the details, the settings, and the baseline image's
  SHA-256 equal the reference drawn in-process, alone, before the load (repeated settings: the compressed image
  too); each sweep's table holds exactly its own settings;
- the queue reported positions to the waiting clients (gradio_client job status: rank, queue size);
- isolation through the app: a thread in the server's process redraws the baseline with no cache every ~1 s
  during the load: bit-identical every time, before and after; the pipeline's state_dict digests unchanged;
- memory: after the 96 requests (56 with random settings) resident memory is within its level after a
  warm-up + (Compare cache 3 + Sweep cache 1) x the largest compressed UNet + 192 MB; every UNet evicted from
  the Compare cache has been freed; live PIL images grew by no more than the baseline cache holds (64); and
  Gradio keeps at most 500 sessions (each API call without a session is one, ~0.2 MB of Python objects).

Traffic goes only to the in-process server on 127.0.0.1 (the `lab_app` fixture).
"""

from __future__ import annotations

import gc
import random
import threading
import time
import weakref
from dataclasses import dataclass, field

import pytest
from gradio_client import Client
from gradio_client.utils import Status
from reliability_tools import GUIDANCE, STEPS, Watcher, digests, redraw, redraw_baseline, rss_bytes

from compression import SCOPES, CompressionSpec, get_pruner
from compression.quantization import QUANT_MODES

pytestmark = [
    pytest.mark.load,
    pytest.mark.slow,
    pytest.mark.filterwarnings(
        "ignore::DeprecationWarning:gradio.*",
        "ignore::FutureWarning:gradio.*",
        "ignore:.*:Warning:gradio.queueing",
        # gc.get_objects() meets torch's deprecated module attribute
        "ignore:`torch.distributed.reduce_op` is deprecated:FutureWarning",
    ),
]

CLIENTS = 8
PER_CLIENT = 12  # 7 random + 4 repeated + 1 sweep
RANDOM_PER_CLIENT, REPEATED_PER_CLIENT = 7, 4
PROMPTS = [
    "a red circle on the left on a blue background",
    "a yellow triangle at the top on a black background",
    "a green square in the center on a white background",
]
SEEDS = [0, 1, 2, 3]
REPEATED = [  # (prompt, seed, spec): drawn again and again by every session
    (PROMPTS[0], 0, CompressionSpec(0.3)),
    (PROMPTS[1], 2, CompressionSpec(0.5, "random-unstructured", "no-io", "simulated-int", 4)),
]
SWEEPS = [[0, 30], [0, 60]]  # prune percentages; L1, fp32, 2 prompts
REQUEST_TIMEOUT_S = 120
LOAD_BOUND_S = 300  # measured: 96 requests in ~95 s here (~1 s each, mostly compressing a new UNet), ~1.7x that on
# CI's machine; the bound catches a hang or a serialisation gone wrong, not a slow machine
MEMORY_MARGIN = 192 * 2**20  # measured: 30-130 MB of growth after malloc_trim over this load, from heap
# fragmentation by UNets of ever-changing shapes (structured pruning; without it the level stays flat) and the 9
# sessions' state. A UNet leaked per random request would add 56 x 10.7 MB = 0.6 GB; an image kept per request
# is caught by the count of live images.
DETAILS = 9


def spec_args(spec: CompressionSpec) -> dict:
    return dict(
        prune_percent=round(spec.prune_amount * 100, 4),
        prune_method=spec.prune_method,
        prune_scope=spec.prune_scope,
        quant_mode=spec.quant_mode,
        bits=spec.bits or 4,
    )


def sweep_args(percents) -> dict:
    return dict(
        model="tiny-shapes",
        prune_percents=percents,
        prune_methods=["l1-unstructured"],
        quant_modes=["fp32"],
        study="grid",
        n_prompts=2,
        steps=STEPS,
        guidance=GUIDANCE,
        latency_repeats=0,
    )


@dataclass
class Answer:
    kind: str  # "random", "repeated", "sweep"
    request: dict
    expected: object  # the spec (compare) or the setting labels (sweep)
    output: object = None
    error: str = ""
    seconds: float = 0.0
    ranks: list = field(default_factory=list)  # (rank, queue_size) seen while waiting


@dataclass
class LoadRun:
    answers: list[Answer]
    seconds: float
    base_before: str
    base_after: str
    watched: list[str]
    digests_before: dict
    digests_after: dict
    baseline_refs: dict  # (prompt, seed) -> baseline hash
    compressed_refs: dict  # index into REPEATED -> compressed hash
    rss_level: int
    rss_after: int
    objects_level: int  # live PIL images
    objects_after: int
    biggest_unet: int
    built: list  # weakrefs to every UNet the Compare engine built
    cached_ids: set


def live_images() -> int:
    """PIL images alive in this process (each request makes 5; a per-request leak piles them up)."""
    from PIL import Image

    return sum(isinstance(o, Image.Image) for o in gc.get_objects())


def structured_scopes(unet, method: str) -> list[str]:
    """Scopes where a structured method has channels to remove (on attention-only scopes the app refuses it with
    a plain message after the request has queued; random settings here are ones that run)."""
    out = []
    for scope in SCOPES:
        try:
            get_pruner(method).plan(unet, 0.3, scope, 0)
            out.append(scope)
        except ValueError:
            pass
    return out


def random_spec(
    rng: random.Random, pruners: list[str], modes: list[str], scopes: dict[str, list[str]]
) -> CompressionSpec:
    method = rng.choice(pruners)
    mode = rng.choice(modes)
    amount = rng.choice([0, rng.randint(1, 95)]) / 100
    return CompressionSpec(
        amount, method, rng.choice(scopes[method]), mode, rng.randint(2, 8) if QUANT_MODES[mode].uses_bits else None
    )


def plan_for(client_index: int, pruners, modes, scopes) -> list[Answer]:
    rng = random.Random(1000 + client_index)
    work = []
    for _ in range(RANDOM_PER_CLIENT):
        spec = random_spec(rng, pruners, modes, scopes)
        req = dict(
            prompt=rng.choice(PROMPTS), seed=rng.choice(SEEDS), steps=STEPS, guidance=GUIDANCE, **spec_args(spec)
        )
        work.append(Answer("random", req, spec))
    for k in range(REPEATED_PER_CLIENT):
        prompt, seed, spec = REPEATED[k % len(REPEATED)]
        req = dict(prompt=prompt, seed=seed, steps=STEPS, guidance=GUIDANCE, **spec_args(spec))
        work.append(Answer("repeated", req, spec))
    percents = SWEEPS[client_index % len(SWEEPS)]
    work.append(Answer("sweep", sweep_args(percents), {"baseline", CompressionSpec(percents[1] / 100).label}))
    rng.shuffle(work)
    assert len(work) == PER_CLIENT
    return work


def run_session(url: str, work: list[Answer], start: threading.Barrier) -> None:
    client = Client(url, verbose=False, download_files=False)
    start.wait(60)
    for a in work:
        api = "/sweep" if a.kind == "sweep" else "/compare"
        t0 = time.perf_counter()
        try:
            job = client.submit(api_name=api, **a.request)
            deadline = time.monotonic() + REQUEST_TIMEOUT_S
            while not job.done() and time.monotonic() < deadline:
                st = job.status()
                if st.code == Status.IN_QUEUE and st.rank is not None:
                    a.ranks.append((st.rank, st.queue_size))
                time.sleep(0.1)
            out = job.result(timeout=max(1.0, deadline - time.monotonic()))
            # Keep what the checks read, not the charts: this process also holds the server, whose memory is measured.
            a.output = (out[0], out[1]) if a.kind == "sweep" else out[DETAILS]
        except Exception as err:  # noqa: BLE001 - every failure is listed by the test
            a.error = f"{type(err).__name__}: {err}"[:300]
        a.seconds = time.perf_counter() - t0
    client.close()


@pytest.fixture(scope="module")
def load_run(lab_app) -> LoadRun:
    app, url = lab_app
    loaded = app.LAB.get("tiny-shapes")
    engine, pipe = loaded.engine, loaded.engine.pipeline
    pruners, modes = app.LAB.pruners(), app.LAB.quant_modes()
    scopes = {m: structured_scopes(pipe.unet, m) if "structured" in m else list(SCOPES) for m in pruners}

    # References, drawn in this process, alone, with no cache, before any load.
    digests_before = digests(pipe)
    base_before = redraw_baseline(pipe)
    baseline_refs = {(p, s): redraw(pipe, p, s)[0] for p in PROMPTS for s in SEEDS}
    compressed_refs = {i: redraw(pipe, p, s, spec)[1] for i, (p, s, spec) in enumerate(REPEATED)}

    # Track every UNet the Compare engine builds (to prove the evicted ones are freed).
    built: list[weakref.ref] = []
    biggest = [max(engine.baseline_cost.bytes, loaded.sweep_engine.baseline_cost.bytes)]
    real_compress = engine.compress

    def tracked(spec, *args, **kwargs):  # (progress, cancel): whatever the engine passes on
        entry, cached = real_compress(spec, *args, **kwargs)
        if not cached:
            built.append(weakref.ref(entry.unet))
            biggest[0] = max(biggest[0], entry.cost.bytes)
        return entry, cached

    engine.compress = tracked
    try:
        # Warm-up: each method and mode once, and each sweep grid (computed now, reused under load): lazily
        # imported kernels, the metric models and the real-image references are part of the memory level.
        warm = Client(url, verbose=False, download_files=False)
        for i in range(max(len(pruners), len(modes))):
            m, q = pruners[i % len(pruners)], modes[i % len(modes)]
            warm.predict(
                api_name="/compare",
                prompt=PROMPTS[0],
                steps=1,
                prune_percent=40,
                prune_method=m,
                prune_scope=scopes[m][0],
                quant_mode=q,
            )
        for percents in SWEEPS:
            warm.predict(api_name="/sweep", **sweep_args(percents))
        warm.close()
        gc.collect()
        rss_level, objects_level = rss_bytes(), live_images()

        plans = [plan_for(i, pruners, modes, scopes) for i in range(CLIENTS)]
        barrier = threading.Barrier(CLIENTS)
        threads = [threading.Thread(target=run_session, args=(url, plans[i], barrier)) for i in range(CLIENTS)]
        with Watcher(pipe, pause=1.0) as watcher:
            t0 = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join(LOAD_BOUND_S + 60)
            seconds = time.perf_counter() - t0
        hung = [t.name for t in threads if t.is_alive()]
        assert not hung, f"sessions still running after {LOAD_BOUND_S + 60} s: {hung}"
        gc.collect()
        rss_after, objects_after = rss_bytes(), live_images()
    finally:
        engine.compress = real_compress
    print(
        f"load: {CLIENTS} x {PER_CLIENT} requests in {seconds:.1f} s; RSS {rss_level / 2**20:.0f} -> "
        f"{rss_after / 2**20:.0f} MB; largest UNet {biggest[0] / 2**20:.1f} MB; {len(built)} UNets built"
    )
    return LoadRun(
        [a for p in plans for a in p],
        seconds,
        base_before,
        redraw_baseline(pipe),
        watcher.drawn,
        digests_before,
        digests(pipe),
        baseline_refs,
        compressed_refs,
        rss_level,
        rss_after,
        objects_level,
        objects_after,
        biggest[0],
        built,
        {id(e.unet) for e in engine.cache.entries()},
    )


def test_no_failures_and_bounded_time(load_run):
    answers = load_run.answers
    assert len(answers) == CLIENTS * PER_CLIENT == 96
    failures = [(a.kind, a.request, a.error) for a in answers if a.error]
    assert not failures, f"{len(failures)} of {len(answers)} requests failed: {failures[:5]}"
    assert load_run.seconds < LOAD_BOUND_S, f"the load took {load_run.seconds:.0f} s"
    assert max(a.seconds for a in answers) < REQUEST_TIMEOUT_S


def test_each_answer_is_its_own_requests(load_run):
    wrong = []
    for a in load_run.answers:
        if a.error:
            continue
        if a.kind == "sweep":
            status, summary = a.output[0], a.output[1]
            settings = {row[0] for row in summary["data"]}
            if settings != a.expected or "2 settings × 2 prompts" not in status:
                wrong.append((a.request["prune_percents"], settings))
            continue
        d = a.output
        req = a.request
        checks = {
            "spec": d["spec"] == a.expected.to_dict(),
            "settings": (d["prompt"], d["seed"], d["steps"], d["guidance"])
            == (req["prompt"], req["seed"], STEPS, GUIDANCE),
            "baseline": d["baseline_sha256"] == load_run.baseline_refs[(req["prompt"], req["seed"])],
        }
        if a.kind == "repeated":
            i = next(
                k for k, (p, s, spec) in enumerate(REPEATED) if (p, s, spec) == (req["prompt"], req["seed"], a.expected)
            )
            checks["compressed"] = d["compressed_sha256"] == load_run.compressed_refs[i]
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            wrong.append((a.expected.label, req["seed"], bad))
    assert not wrong, f"{len(wrong)} answers were not their request's: {wrong[:5]}"


def test_queue_positions_are_reported(load_run):
    ranks = [r for a in load_run.answers for r in a.ranks]
    waited = [a for a in load_run.answers if a.ranks]
    assert len(waited) >= 10, f"only {len(waited)} of 96 requests were told their queue position"
    assert all(0 <= rank < size <= CLIENTS for rank, size in ranks if size is not None), ranks[:10]
    assert any(rank >= 1 for rank, _ in ranks), "no request was ever told it had others ahead of it"


def test_baseline_is_bit_identical_before_during_and_after(load_run):
    assert load_run.base_after == load_run.base_before
    assert len(load_run.watched) >= 5, "the watcher did not draw during the load"
    changed = [i for i, h in enumerate(load_run.watched) if h != load_run.base_before]
    assert not changed, f"the baseline image changed during the load at drawings {changed}"
    assert load_run.digests_after == load_run.digests_before


def test_memory_stays_bounded_and_evicted_unets_are_freed(load_run, lab_app):
    app, _ = lab_app
    engine = app.LAB.get("tiny-shapes").engine
    grown = load_run.rss_after - load_run.rss_level
    bound = (engine.cache_size + 1) * load_run.biggest_unet + MEMORY_MARGIN
    assert grown <= bound, (
        f"RSS grew {grown / 2**20:.1f} MB over the load; bound {bound / 2**20:.1f} MB = "
        f"({engine.cache_size} + 1) x {load_run.biggest_unet / 2**20:.1f} MB + 192 MB"
    )
    # The baseline cache may fill up during the load (64 images); no other image may stay alive per request.
    images = load_run.objects_after - load_run.objects_level
    assert images <= engine.baseline_cache_size, f"{images} more PIL images alive after the load"
    assert app.demo.state_holder.capacity == app.STATE_SESSIONS == 500
    assert len(app.demo.state_holder.session_data) <= app.STATE_SESSIONS
    assert len(load_run.built) >= 30  # random settings: most requests compressed a new UNet
    alive = {id(u) for u in (r() for r in load_run.built) if u is not None}
    leaked = alive - load_run.cached_ids
    assert not leaked, f"{len(leaked)} UNets evicted from the cache are still alive"
