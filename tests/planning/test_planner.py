"""The batch planner: every take once, budgets kept, few model swaps, balanced, deterministic."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from part_takes import CEL, LINEART, PARTS, REN, X2, inventory, with_parts
from paths import DEMO_SHOT_LIST

from tower.planning.batches import model_paths
from tower.planning.planner import (
    Plan,
    PlanningError,
    ServerSpec,
    apply_decode_policy,
    force_token,
    plan_batches,
    split_batch,
)
from tower.planning.vram import GPU_PROFILES, VramModel
from tower.shotlist.presets import BUILTIN_PRESETS, Preset
from tower.shotlist.shots import load_shot_list
from tower.spec.graph import build_graph
from tower.spec.parts import CHECKPOINTS, CONTROLNETS, LORAS, UPSCALE_MODELS, LoraSpec
from tower.spec.takes import ResolvedTake, resolve_takes

DEMO = DEMO_SHOT_LIST
SD = "anime-final-sd15.safetensors"
DRAFT = "anime-draft-sd15.safetensors"
XL = "animagine-xl-3.1.safetensors"
PRESETS = {**BUILTIN_PRESETS,
           "xl": Preset(name="xl", steps=25, width=1024, height=1024, sampler="euler",
                        scheduler="normal", cfg=7.0, checkpoint=XL, max_batch=4)}
BUDGET = {name: p.budget_mb for name, p in GPU_PROFILES.items()}
T_RENDERED = datetime(2026, 11, 27, tzinfo=UTC)


def take(shot: str = "sh010", k: int = 0, preset: str = "standard", **changes: object
         ) -> ResolvedTake:
    p = PRESETS[preset]
    base = ResolvedTake(
        episode="ep01", shot_id=shot, take=k, prompt=f"prompt {shot}", negative="lowres",
        seed=7, preset=p.name, checkpoint=p.checkpoint, sampler=p.sampler,
        scheduler=p.scheduler, steps=p.steps, cfg=p.cfg, width=p.width, height=p.height,
        vae_tile_size=p.vae_tile_size)
    return replace(base, **changes)  # type: ignore[arg-type]


def shot_takes(shot: str, count: int, preset: str = "standard", **changes: object
               ) -> list[ResolvedTake]:
    return [take(shot, k, preset, **changes) for k in range(count)]


def identity(t: ResolvedTake) -> tuple[str, str, str, int]:
    return (t.episode, t.shot_id, t.preset, t.take)


def check_invariants(plan: Plan, takes: list[ResolvedTake], servers: list[ServerSpec],
                     vram: VramModel | None = None) -> None:
    """Every take exactly once, valid prompts, within each server's budget and max_batch."""
    model = vram or VramModel()
    planned = Counter(identity(t) for b in plan.batches for t in b.takes)
    assert planned == Counter(identity(t) for t in set(takes))
    by_name = {s.name: s for s in servers}
    for b in plan.batches:
        build_graph(b.takes, b.filename_prefix)          # one valid ComfyUI prompt
        assert b.vram_estimate_mb <= by_name[b.server].vram_budget_mb
        assert b.vram_estimate_mb == model.estimate_take_mb(b.first, b.size)
        assert b.size <= PRESETS[b.preset].max_batch
        assert b.models == b.first.models and not by_name[b.server].lacks(b.models)
    assert len({b.batch_id for b in plan.batches}) == len(plan.batches)


def test_demo_episode_plan_keeps_every_invariant() -> None:
    takes = resolve_takes(load_shot_list(DEMO))
    servers = [ServerSpec("gpu-a", BUDGET["12gb"], SD), ServerSpec("gpu-b", BUDGET["8gb"])]
    plan = plan_batches(takes, servers, PRESETS)
    check_invariants(plan, takes, servers)
    assert plan.takes == len(takes)
    assert plan_batches(takes, servers, PRESETS) == plan
    assert plan_batches(list(reversed(takes)), servers, PRESETS) == plan


def test_batch_size_is_the_largest_that_fits_each_budget() -> None:
    takes = shot_takes("sh010", 4)          # standard: 768x768, max_batch 4
    big = plan_batches(takes, [ServerSpec("a", BUDGET["12gb"])], PRESETS)
    small = plan_batches(takes, [ServerSpec("b", BUDGET["8gb"])], PRESETS)
    assert [b.size for b in big.batches] == [4]
    assert [b.size for b in small.batches] == [2, 2]
    model = VramModel()
    assert model.estimate_mb(SD, 768, 768, 3) > BUDGET["8gb"]
    capped = plan_batches(shot_takes("sh010", 8, "high"), [ServerSpec("h", BUDGET["80gb"])],
                          PRESETS)
    assert [b.size for b in capped.batches] == [2, 2, 2, 2]          # high: max_batch 2


def test_gaps_and_differing_settings_split_batches() -> None:
    takes = [t for t in shot_takes("sh010", 6) if t.take != 2]      # take 2 already rendered
    takes.append(take("sh010", 6, seed=99))                          # same shot, other seed
    plan = plan_batches(takes, [ServerSpec("a", BUDGET["24gb"])], PRESETS)
    assert sorted(b.take_range for b in plan.batches) == ["t0-1", "t3-5", "t6"]


def test_batches_are_labelled_and_ids_are_stable_hashes() -> None:
    plan = plan_batches(shot_takes("sh030", 4, "high"), [ServerSpec("a", BUDGET["12gb"])],
                        PRESETS)
    first = plan.batches[0]
    assert first.label == "ep01 sh030 t0-1 high"
    assert len(first.batch_id) == 16 and int(first.batch_id, 16) >= 0
    assert first.prompt_id == f"tower-{first.batch_id}"
    assert first.filename_prefix == f"ep01/sh030/{first.batch_id[:8]}"
    assert (first.episode, first.shot_id, first.preset, first.checkpoint, first.start,
            first.size, first.vae_tiled) == ("ep01", "sh030", "high", SD, 0, 2, False)
    other = plan_batches(shot_takes("sh030", 4, "high"), [ServerSpec("z", BUDGET["12gb"])],
                         PRESETS)
    assert [b.batch_id for b in other.batches] == [b.batch_id for b in plan.batches]


def test_each_checkpoint_stays_on_the_server_that_has_it_loaded() -> None:
    takes = [t for s in range(6) for t in shot_takes(f"a{s}", 4, "standard")] + \
            [t for s in range(12) for t in shot_takes(f"d{s}", 8, "draft")]
    servers = [ServerSpec("one", BUDGET["12gb"], DRAFT), ServerSpec("two", BUDGET["12gb"], SD)]
    plan = plan_batches(takes, servers, PRESETS)
    check_invariants(plan, takes, servers)
    assert {b.checkpoint for b in plan.for_server("two")} == {SD}
    assert {b.checkpoint for b in plan.for_server("one")} == {DRAFT}
    assert plan.model_swaps == {"one": 0, "two": 0}


def test_swaps_equal_distinct_checkpoints_and_loaded_one_goes_first() -> None:
    takes = shot_takes("x1", 1, "xl") + shot_takes("s1", 2) + shot_takes("d1", 2, "draft")
    servers = [ServerSpec("only", BUDGET["24gb"], DRAFT)]
    plan = plan_batches(takes, servers, PRESETS)
    order = [b.checkpoint for b in plan.for_server("only")]
    assert order[0] == DRAFT
    assert len(set(order)) == 3 and plan.model_swaps == {"only": 2}
    # grouped: a checkpoint never comes back once left
    assert order == sorted(order, key=order.index)


def test_a_small_job_goes_to_the_server_with_its_checkpoint_loaded() -> None:
    takes = shot_takes("sh010", 2)
    servers = [ServerSpec("cold", BUDGET["12gb"]), ServerSpec("warm", BUDGET["12gb"], SD)]
    plan = plan_batches(takes, servers, PRESETS)
    assert {b.server for b in plan.batches} == {"warm"}
    assert plan.model_swaps == {"cold": 0, "warm": 0}


def test_work_is_balanced_across_servers_by_speed() -> None:
    takes = [t for s in range(40) for t in shot_takes(f"sh{s:03d}", 4)]
    servers = [ServerSpec("slow", BUDGET["12gb"], SD), ServerSpec("fast", BUDGET["12gb"], SD,
                                                                  speed=2.0)]
    plan = plan_batches(takes, servers, PRESETS)
    check_invariants(plan, takes, servers)
    one_chunk = max(b.est_seconds for b in plan.batches)
    assert abs(plan.est_seconds["fast"] - plan.est_seconds["slow"]) <= one_chunk
    assert sum(b.size for b in plan.for_server("fast")) > sum(
        b.size for b in plan.for_server("slow"))


def test_a_take_too_big_for_every_budget_switches_to_tiled_decode() -> None:
    takes = shot_takes("sh010", 2, "xl")
    one = [ServerSpec("a", BUDGET["12gb"])]
    plan = plan_batches(apply_decode_policy(takes, one, PRESETS), one, PRESETS)
    assert all(b.vae_tiled and b.first.vae_tile_size == 512 for b in plan.batches)
    assert plan.batches[0].takes[0].key != takes[0].key      # tiled pixels, tiled key
    both = [ServerSpec("a", BUDGET["12gb"]), ServerSpec("big", BUDGET["24gb"])]
    plan = plan_batches(apply_decode_policy(takes, both, PRESETS), both, PRESETS)
    assert {(b.server, b.vae_tiled) for b in plan.batches} == {("big", False)}


def test_what_fits_nowhere_is_a_clear_planning_error() -> None:
    huge = shot_takes("sh010", 1, "xl", width=4096, height=4096)
    with pytest.raises(PlanningError) as err:
        apply_decode_policy(huge, [ServerSpec("a", BUDGET["8gb"])], PRESETS)
    message = str(err.value)
    for part in ("ep01 sh010 t0", "MB", "6500", "largest budget", "vae_tile_size",
                 "tiled VAE decode"):
        assert part in message


def test_the_planner_never_switches_a_decode_what_fits_nowhere_goes_to_the_largest() -> None:
    takes = shot_takes("sh010", 2, "xl")                # fits no 12 GB card decoded whole
    servers = [ServerSpec("a", BUDGET["12gb"]), ServerSpec("b", BUDGET["8gb"])]
    plan = plan_batches(takes, servers, PRESETS)
    assert [(b.server, b.size, b.vae_tiled) for b in plan.batches] == [("a", 1, False)] * 2
    assert {t.key for b in plan.batches for t in b.takes} == {t.key for t in takes}
    assert all(b.vram_estimate_mb > BUDGET["12gb"] for b in plan.batches)


def test_the_decode_policy_refuses_what_fits_nowhere_even_tiled() -> None:
    huge = shot_takes("sh010", 1, "xl", width=4096, height=4096)
    with pytest.raises(PlanningError, match="largest budget is 6500 MB"):
        apply_decode_policy(huge, [ServerSpec("a", BUDGET["8gb"])], PRESETS)


@pytest.mark.parametrize(("servers", "takes", "message"), [
    ([], shot_takes("s", 1), "no servers"),
    ([ServerSpec("a", 1000), ServerSpec("a", 2000)], shot_takes("s", 1), "unique"),
    ([ServerSpec("a", 0)], shot_takes("s", 1), "positive"),
    ([ServerSpec("a", 10000)], [replace(take(), preset="ultra")], "unknown preset 'ultra'"),
])
def test_bad_planning_input(servers: list[ServerSpec], takes: list[ResolvedTake],
                            message: str) -> None:
    with pytest.raises(PlanningError, match=message):
        plan_batches(takes, servers, PRESETS)


def test_an_empty_list_plans_nothing() -> None:
    plan = plan_batches([], [ServerSpec("a", 10000)], PRESETS)
    assert plan.batches == () and plan.model_swaps == {"a": 0}


def test_split_batch_halves_for_an_oom_retry() -> None:
    plan = plan_batches(shot_takes("sh010", 3), [ServerSpec("a", BUDGET["12gb"])], PRESETS)
    (batch,) = plan.batches
    left, right = split_batch(batch)
    assert left.takes + right.takes == batch.takes
    assert (left.size, right.size) == (2, 1) and left.server == right.server == "a"
    assert left.vram_estimate_mb < batch.vram_estimate_mb
    assert len({batch.batch_id, left.batch_id, right.batch_id}) == 3
    assert left.est_seconds + right.est_seconds == pytest.approx(batch.est_seconds)
    build_graph(right.takes, right.filename_prefix)
    assert split_batch(batch) == (left, right)
    with pytest.raises(ValueError, match="cannot be split"):
        split_batch(right)


def test_force_token_is_stable_per_run_and_differs_between_runs() -> None:
    run = "5f0c1a52-3f4e-4c55-9b1e-0d8b2b0d3e11"
    assert force_token(run) == force_token(run)
    assert force_token(run) != force_token(run.replace("5f", "6f", 1))
    assert force_token(run).startswith("f") and len(force_token(run)) == 13
    with pytest.raises(ValueError, match="run id"):
        force_token("")


def test_a_forced_plan_is_the_same_plan_under_prompt_ids_of_the_run_own() -> None:
    takes = shot_takes("sh010", 5) + shot_takes("sh020", 3, preset="draft")
    servers = [ServerSpec("a", BUDGET["12gb"]), ServerSpec("b", BUDGET["8gb"])]
    plain = plan_batches(takes, servers, PRESETS)
    token = force_token("run-1")
    forced = plan_batches(takes, servers, PRESETS, fresh=token)
    assert forced == plain.forced(token)
    assert [replace(b, fresh=None) for b in forced.batches] == list(plain.batches)
    assert (forced.model_swaps, forced.est_seconds) == (plain.model_swaps, plain.est_seconds)
    assert all(b.fresh is None and b.cache_buster is None for b in plain.batches)
    for before, after in zip(plain.batches, forced.batches, strict=True):
        assert after.batch_id == before.batch_id  # same takes, same metrics/index identity
        assert after.prompt_id == f"{before.prompt_id}-{token}"
        assert after.cache_buster == after.prompt_id
    other_run = plan_batches(takes, servers, PRESETS, fresh=force_token("run-2"))
    assert not {b.prompt_id for b in other_run.batches} & {b.prompt_id for b in forced.batches}
    assert plan_batches(takes, servers, PRESETS, fresh=token) == forced  # retries agree


def test_oom_halves_of_a_forced_batch_stay_forced() -> None:
    token = force_token("run-1")
    plan = plan_batches(shot_takes("sh010", 4), [ServerSpec("a", BUDGET["12gb"])], PRESETS,
                        fresh=token)
    (batch,) = plan.batches
    halves = split_batch(batch)
    assert [h.fresh for h in halves] == [token, token]
    assert [h.prompt_id for h in halves] == [f"tower-{h.batch_id}-{token}" for h in halves]
    assert len({batch.prompt_id, *(h.prompt_id for h in halves)}) == 3
    assert [q.fresh for q in split_batch(halves[0])] == [token, token]


@pytest.mark.parametrize(("preset", "budgets", "tiled"), [
    ("xl", [BUDGET["12gb"]], True),                       # fits nowhere whole
    ("xl", [BUDGET["12gb"], BUDGET["24gb"]], False),      # the big card decodes it whole
    ("high", [BUDGET["8gb"]], False),                     # SD1.5 1024 fits 8 GB alone
    ("standard", [BUDGET["8gb"]], False),
])
def test_decode_policy_tiles_only_what_no_server_can_decode_whole(
        preset: str, budgets: list[int], tiled: bool) -> None:
    takes = shot_takes("sh010", 2, preset)
    servers = [ServerSpec(f"s{i}", b) for i, b in enumerate(budgets)]
    decided = apply_decode_policy(takes, servers, PRESETS)
    assert [t.vae_tiled for t in decided] == [tiled, tiled]
    assert [t.take for t in decided] == [0, 1]
    # the planner then renders exactly these keys: no second switch
    plan = plan_batches(decided, servers, PRESETS)
    assert {t.key for b in plan.batches for t in b.takes} == {t.key for t in decided}


def test_plan_table_and_rows_are_readable() -> None:
    takes = resolve_takes(load_shot_list(DEMO))
    servers = [ServerSpec("gpu-a", BUDGET["12gb"]), ServerSpec("gpu-b", BUDGET["8gb"])]
    plan = plan_batches(takes, servers, PRESETS)
    text = plan.table()
    assert text.splitlines()[0].split()[:4] == ["server", "batch", "shot", "takes"]
    assert all(b.batch_id in text for b in plan.batches)
    assert f"total: {len(plan.batches)} batches, {len(takes)} takes" in text
    assert "gpu-b:" in text and "model swaps" in text
    rows = plan.rows()
    assert len(rows) == len(plan.batches)
    assert set(rows[0]) == {"batch", "shot", "takes", "preset", "server", "vram_estimate_mb",
                            "est_seconds"}


# --- properties ----------------------------------------------------------------------

shots = st.lists(
    st.tuples(st.sampled_from(["draft", "standard", "high", "xl"]), st.integers(1, 9),
              st.sampled_from(["ep01", "ep02"])),
    min_size=1, max_size=12)
server_lists = st.lists(
    st.tuples(st.sampled_from(["8gb", "10gb", "12gb", "24gb"]),
              st.sampled_from([None, SD, DRAFT, XL]), st.sampled_from([0.5, 1.0, 2.0])),
    min_size=0, max_size=3)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(shots=shots, extra=server_lists, seed=st.integers(0, 1000))
def test_planner_properties(shots: list[tuple[str, int, str]],
                            extra: list[tuple[str, str | None, float]], seed: int) -> None:
    takes = [replace(t, episode=episode)
             for n, (preset, count, episode) in enumerate(shots)
             for t in shot_takes(f"sh{n:03d}", count, preset)]
    servers = [ServerSpec("main", BUDGET["12gb"])] + [
        ServerSpec(f"s{i}", BUDGET[profile], loaded, speed)
        for i, (profile, loaded, speed) in enumerate(extra)]
    decided = apply_decode_policy(takes, servers, PRESETS)
    plan = plan_batches(decided, servers, PRESETS)
    check_invariants(plan, decided, servers)
    shuffled = decided[:]
    random.Random(seed).shuffle(shuffled)
    assert plan_batches(shuffled, servers, PRESETS) == plan
    for name in plan.model_swaps:
        served = {b.checkpoint for b in plan.for_server(name)}
        assert plan.model_swaps[name] <= len(served)


def test_plan_command_prints_the_plan_minus_what_the_index_has(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from tower.cli import app
    from tower.store.files import DataRoot
    from tower.store.index import IndexRow, OutputIndex

    root = DataRoot(tmp_path / "data")
    servers = [ServerSpec("a", BUDGET["12gb"]), ServerSpec("b", 6500)]
    takes = apply_decode_policy(resolve_takes(load_shot_list(DEMO)), servers, PRESETS)
    done = takes[:5]
    rows = [IndexRow.from_take(t, output_path=f"{t.shot_id}/{t.take}.png", sha256="0" * 64,
                               size_bytes=3, rendered_at=T_RENDERED, server="a",
                               prompt_id="p", run_id="r") for t in done]
    for row in rows:
        (root.renders / row.output_path).parent.mkdir(parents=True, exist_ok=True)
        (root.renders / row.output_path).write_bytes(b"png")
    OutputIndex(root.index).append(rows)
    result = CliRunner().invoke(app, ["plan", str(DEMO), "--servers", "a=12gb,b=6500",
                                      "--data-root", str(root.root)])
    assert result.exit_code == 0, result.output
    # the demo reuses one image in two shots: its twin is served from the index too
    served = sum(t.key in {d.key for d in done} for t in takes)
    assert served > len(done)
    assert f"{served} of {len(takes)} takes already rendered" in result.output
    # takes that share a key with another unrendered take are planned once
    unrendered_keys = {t.key for t in takes if t.key not in {d.key for d in done}}
    assert result.output.splitlines()[-1].endswith(f" {len(unrendered_keys)} takes")
    bad = CliRunner().invoke(app, ["plan", str(DEMO), "--servers", "a=lots"])
    assert bad.exit_code != 0 and "budget must be MB" in bad.output


def test_a_two_checkpoint_season_needs_few_swaps_and_stays_balanced() -> None:
    rng = random.Random(5)
    takes = []
    for n in range(400):
        preset = rng.choice(["draft", "draft", "standard", "high"])
        takes += shot_takes(f"sh{n:04d}", rng.randint(1, 4), preset)
    servers = [ServerSpec(name, BUDGET[profile])
               for name, profile in (("a", "12gb"), ("b", "12gb"), ("c", "10gb"), ("d", "8gb"))]
    plan = plan_batches(takes, servers, PRESETS)
    check_invariants(plan, takes, servers)
    # every server loads once; one checkpoint spans a boundary: at most one more swap
    assert sum(plan.model_swaps.values()) <= len(servers) + 1
    ideal = ServerSpec("ideal", BUDGET["12gb"], speed=len(servers))
    bound = plan_batches(takes, [ideal], PRESETS).est_seconds["ideal"]
    assert max(plan.est_seconds.values()) <= 1.05 * bound


def test_plan_command_calibrates_vram_from_measured_batches(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from tower.cli import app
    from tower.store.metrics import BatchMetrics, MetricsStore

    prior = VramModel()
    rows = []
    measured_at = datetime.now(UTC) - timedelta(hours=1)   # the command reads the real clock
    for n in range(24):              # this card needs half the default activation memory
        size, batch = (512, 768, 1024)[n % 3], 1 + n % 4
        peak = 2000 + 0.5 * prior.activation_mb("sd15", size, size, batch)
        rows.append(BatchMetrics(
            run_id="r", batch_id=f"b{n}", server="a", episode="ep01", preset="standard",
            checkpoint=SD, width=size, height=size, takes=batch, batch_size=batch,
            vae_tiled=False, status="ok", attempt=1, finished_at=measured_at, vram_peak_mb=peak))
    MetricsStore(tmp_path / "metrics").append(rows)
    args = ["plan", str(DEMO), "--servers", "small=8gb", "--data-root", str(tmp_path)]
    calibrated = CliRunner().invoke(app, args)
    assert calibrated.exit_code == 0, calibrated.output
    assert "VRAM model for sd15 calibrated from 24 measured batches" in calibrated.output
    default = CliRunner().invoke(app, [*args[:-1], str(tmp_path / "empty")])
    assert "calibrated" not in default.output
    # smaller estimates: the same takes fit in fewer, larger batches on the 8 GB card
    assert len(calibrated.output.splitlines()) < len(default.output.splitlines())


# --- production parts and model inventories ---------------------------------------------

SD_FILE, XL_FILE = (CHECKPOINTS, SD), (CHECKPOINTS, XL)
REN_FILE, CEL_FILE = (LORAS, REN), (LORAS, CEL)
LINEART_FILE, X2_FILE = (CONTROLNETS, LINEART), (UPSCALE_MODELS, X2)


def part_takes(shot: str, count: int, parts: list[str], preset: str = "standard",
               episode: str = "ep02", **changes: object) -> list[ResolvedTake]:
    return [with_parts(t, parts) for t in shot_takes(shot, count, preset, episode=episode,
                                                     **changes)]


def test_takes_no_server_can_render_are_one_error_saying_what_each_server_lacks() -> None:
    x = replace(PARTS["control"]["control"], model="x.safetensors")  # type: ignore[type-var]
    lora_and_x = part_takes("sh010", 4, ["lora"], control=x) + part_takes("sh020", 2, ["lora"],
                                                                             control=x)
    gaps = [t for t in part_takes("sh050", 6, ["upscale"]) if t.take in (0, 1, 5)]
    fine = part_takes("sh030", 2, [])
    servers = [ServerSpec("gpu-a", BUDGET["24gb"], models=inventory(SD_FILE, (CONTROLNETS,
                                                                              "x.safetensors"))),
               ServerSpec("gpu-b", BUDGET["12gb"], models=inventory(SD_FILE))]
    with pytest.raises(PlanningError) as err:
        plan_batches(fine + gaps + lora_and_x, servers, PRESETS)
    assert str(err.value) == "\n".join([
        "no server has every model file these takes need (nothing was queued):",
        "  ep02 sh010 t0-3, ep02 sh020 t0-1: gpu-a lacks loras/char-ren-v2.safetensors;"
        " gpu-b lacks loras/char-ren-v2.safetensors, controlnet/x.safetensors",
        "  ep02 sh050 t0-1 t5: gpu-a lacks upscale_models/anime-x2-compact.safetensors;"
        " gpu-b lacks upscale_models/anime-x2-compact.safetensors",
        "copy the files into the servers' ComfyUI models folders, or change the takes"])
    # the decode policy leaves them to that error (they may be in the index already)
    assert apply_decode_policy(lora_and_x, servers, PRESETS) == lora_and_x


def test_servers_without_the_models_are_skipped_and_the_plan_says_so() -> None:
    lora = part_takes("sh020", 3, ["lora"]) + part_takes("sh010", 4, ["lora"])
    cel = part_takes("sh040", 2, [], episode="ep03", loras=(LoraSpec(REN), LoraSpec(CEL)))
    plain = part_takes("sh030", 8, [])
    servers = [ServerSpec("gpu-a", BUDGET["12gb"], models=inventory(SD_FILE, REN_FILE, CEL_FILE)),
               ServerSpec("gpu-b", BUDGET["12gb"], SD, speed=4.0, models=inventory(SD_FILE)),
               ServerSpec("gpu-c", BUDGET["12gb"], models=inventory(SD_FILE, REN_FILE))]
    takes = plain + lora + cel
    plan = plan_batches(takes, servers, PRESETS)
    check_invariants(plan, takes, servers)
    assert {b.server for b in plan.batches if b.first.loras} <= {"gpu-a", "gpu-c"}
    assert {b.server for b in plan.batches if "sh040" in b.label} == {"gpu-a"}
    assert plan.notes == (          # per server, per set of missing files
        "gpu-b skipped for ep02 sh010, sh020: missing loras/char-ren-v2.safetensors",
        "gpu-b skipped for ep03 sh040: missing loras/char-ren-v2.safetensors,"
        " loras/style-cel-v1.safetensors",
        "gpu-c skipped for ep03 sh040: missing loras/style-cel-v1.safetensors")
    table = plan.table()
    assert all(f"note: {note}" in table for note in plan.notes)
    assert table.splitlines()[-1] == f"total: {len(plan.batches)} batches, {len(takes)} takes"
    assert plan_batches(list(reversed(takes)), servers, PRESETS) == plan
    assert plan_batches(plain, servers, PRESETS).notes == ()
    unknown = [replace(s, models=None) for s in servers]       # unknown: taken as complete
    assert plan_batches(takes, unknown, PRESETS).notes == ()


def test_the_decode_is_decided_on_the_servers_that_have_the_models() -> None:
    takes = part_takes("sh010", 2, ["lora"], preset="xl")
    servers = [ServerSpec("big", BUDGET["24gb"], models=inventory(XL_FILE)),
               ServerSpec("small", BUDGET["12gb"], models=inventory(XL_FILE, REN_FILE))]
    decided = apply_decode_policy(takes, servers, PRESETS)
    assert [t.vae_tiled for t in decided] == [True, True]      # only "small" can render them
    plan = plan_batches(decided, servers, PRESETS)
    check_invariants(plan, decided, servers)
    assert {b.server for b in plan.batches} == {"small"}
    everywhere = [replace(s, models=None) for s in servers]
    assert [t.vae_tiled for t in apply_decode_policy(takes, everywhere, PRESETS)] == [False] * 2


def test_a_production_take_too_big_for_every_budget_says_which_part_peaks() -> None:
    huge = part_takes("sh010", 1, ["lora", "hires"], preset="xl", width=2048, height=2048)
    with pytest.raises(PlanningError) as err:
        apply_decode_policy(huge, [ServerSpec("a", BUDGET["8gb"])], PRESETS)
    message = str(err.value)
    for part in ("ep02 sh010 t0", "lora+hires", "peaking in the sampling", "drop a part",
                 "largest budget is 6500 MB"):
        assert part in message


def test_parts_make_batches_smaller_and_slower_and_halves_are_sized_alike() -> None:
    plain = part_takes("sh010", 4, [])
    heavy = part_takes("sh010", 4, ["lora", "control", "upscale"])
    servers = [ServerSpec("a", BUDGET["12gb"])]
    light, loaded = plan_batches(plain, servers, PRESETS), plan_batches(heavy, servers, PRESETS)
    check_invariants(loaded, heavy, servers)
    assert [b.size for b in light.batches] == [4] and [b.size for b in loaded.batches] == [3, 1]
    assert loaded.est_seconds["a"] > light.est_seconds["a"]
    batch = loaded.batches[0]
    assert (batch.parts, batch.models) == ("lora+control+upscale",
                                           (SD_FILE, REN_FILE, LINEART_FILE, X2_FILE))
    model = VramModel()
    assert batch.vram_estimate_mb == model.estimate_take_mb(batch.first, 3)
    assert model.estimate_take_mb(batch.first, 3) > model.estimate_mb(SD, 768, 768, 3)
    left, right = split_batch(batch)
    assert left.vram_estimate_mb == model.estimate_take_mb(batch.first, 2)
    assert right.vram_estimate_mb == model.estimate_take_mb(batch.first, 1)
    assert left.models == right.models == batch.models


ALL_FILES = [SD_FILE, (CHECKPOINTS, DRAFT), XL_FILE, REN_FILE, CEL_FILE, LINEART_FILE, X2_FILE]
production_shots = st.lists(
    st.tuples(st.sampled_from(["draft", "standard", "high", "xl"]), st.integers(1, 6),
              st.sampled_from(["ep01", "ep02"]), st.sets(st.sampled_from(sorted(PARTS))),
              st.sampled_from([REN, CEL])),
    min_size=1, max_size=8)
inventoried_servers = st.lists(
    st.tuples(st.sampled_from(["10gb", "12gb", "24gb", "24gb"]),
              st.sampled_from([None, SD, DRAFT, XL]), st.sampled_from([0.5, 1.0, 2.0]),
              st.one_of(st.none(), st.sets(st.sampled_from(ALL_FILES), min_size=4))),
    min_size=1, max_size=4)


def _production_takes(shots: list[tuple[str, int, str, set[str], str]]) -> list[ResolvedTake]:
    takes = []
    for n, (preset, count, episode, parts, lora) in enumerate(shots):
        for t in shot_takes(f"sh{n:03d}", count, preset, episode=episode):
            t = with_parts(t, sorted(parts))
            if t.loras:
                t = replace(t, loras=(replace(t.loras[0], name=lora),))
            takes.append(t)
    return takes


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(shots=production_shots, specs=inventoried_servers, seed=st.integers(0, 1000))
def test_planner_properties_with_parts_and_inventories(
        shots: list[tuple[str, int, str, set[str], str]],
        specs: list[tuple[str, str | None, float, set[tuple[str, str]] | None]],
        seed: int) -> None:
    takes = _production_takes(shots)
    servers = [ServerSpec(f"s{i}", BUDGET[profile], loaded, speed,
                          None if files is None else inventory(*files))
               for i, (profile, loaded, speed, files) in enumerate(specs)]
    stranded = [t for t in takes if all(s.lacks(t.models) for s in servers)]
    try:
        decided = apply_decode_policy(takes, servers, PRESETS)
        plan = plan_batches(decided, servers, PRESETS)
    except PlanningError as err:
        event("refused: " + ("missing models" if "model file" in str(err) else "too big"))
        _check_refusal(str(err), takes, servers, stranded)
        return
    event(f"planned, {'with' if plan.notes else 'without'} notes")
    assert not stranded
    check_invariants(plan, decided, servers)      # once each, budgets, models, valid graphs
    shuffled = decided[:]
    random.Random(seed).shuffle(shuffled)
    assert plan_batches(shuffled, servers, PRESETS) == plan          # notes included
    for t in decided:
        for s in servers:
            if missing := s.lacks(t.models):
                assert any(note.startswith(f"{s.name} skipped for ") and t.shot_id in note
                           and note.endswith(f"missing {model_paths(missing)}")
                           for note in plan.notes)


def _check_refusal(message: str, takes: list[ResolvedTake], servers: list[ServerSpec],
                   stranded: list[ResolvedTake]) -> None:
    """A refusal is either the missing-models error for every stranded take, or a take
    that not even tiled fits the largest budget of the servers that have its models."""
    if message.startswith("no server has every model file"):
        assert stranded
        for t in stranded:
            assert f"{t.episode} {t.shot_id} " in message
        return
    assert "largest budget" in message
    model = VramModel()
    assert any(model.estimate_take_mb(t.with_tiled_decode(PRESETS[t.preset].vae_tile_size), 1)
               > max(s.vram_budget_mb for s in servers if not s.lacks(t.models))
               for t in takes if t not in stranded)
