"""The Parquet schemas, declared once: the output index and the per-batch metrics.

Every writer casts to these schemas and every file carries them, so readers (dedup,
the daily report, ad-hoc polars queries by a supervisor) never guess types.
"""

from __future__ import annotations

import pyarrow as pa

UTC_TIMESTAMP = pa.timestamp("us", tz="UTC")

# One row per rendered take.
INDEX_SCHEMA = pa.schema([
    pa.field("render_key", pa.string(), nullable=False),
    pa.field("episode", pa.string(), nullable=False),
    pa.field("shot_id", pa.string(), nullable=False),
    pa.field("take", pa.int16(), nullable=False),
    pa.field("preset", pa.string(), nullable=False),
    pa.field("checkpoint", pa.string(), nullable=False),
    pa.field("seed", pa.uint64(), nullable=False),
    pa.field("width", pa.int32(), nullable=False),
    pa.field("height", pa.int32(), nullable=False),
    pa.field("prompt", pa.string(), nullable=False),
    pa.field("output_path", pa.string(), nullable=False),  # relative to the render root
    pa.field("sha256", pa.string(), nullable=False),
    pa.field("size_bytes", pa.int64(), nullable=False),
    pa.field("rendered_at", UTC_TIMESTAMP, nullable=False),
    pa.field("server", pa.string(), nullable=False),
    pa.field("prompt_id", pa.string(), nullable=False),
    pa.field("run_id", pa.string(), nullable=False),
    # sha256 of the settings that define a shot's look (everything in the render key but
    # seed, take and VAE decode): lets previews reuse any take of the same shot setup.
    pa.field("look_key", pa.string()),
    # The output check's verdict (tower.runtime.checks): "ok" or "suspect" (all one colour,
    # near-black, near-white, far smaller than its siblings), the reasons beside it. Null
    # in parts written before the check existed: read as unchecked, not as suspect.
    pa.field("status", pa.string()),
    pa.field("suspect_reason", pa.string()),
    # The key without model identity (tower.spec.keys.name_key) and the identity itself
    # (JSON of ResolvedTake.model_identity); both null in rows written before identity,
    # whose render_key is the name key. Dedup reads them to recognise those old rows once
    # and to re-render exactly the takes whose model changed (see OutputIndex.dedup).
    pa.field("name_key", pa.string()),
    pa.field("model_identity", pa.string()),
])

BATCH_STATUSES = ("ok", "cached", "failed", "oom", "interrupted")

# One row per render-batch attempt. Seconds are float64; unmeasured values are null.
METRICS_SCHEMA = pa.schema([
    pa.field("run_id", pa.string(), nullable=False),
    pa.field("flow_run_id", pa.string()),
    pa.field("batch_id", pa.string(), nullable=False),
    pa.field("server", pa.string(), nullable=False),
    pa.field("episode", pa.string(), nullable=False),
    pa.field("preset", pa.string(), nullable=False),
    pa.field("checkpoint", pa.string(), nullable=False),
    pa.field("width", pa.int32(), nullable=False),
    pa.field("height", pa.int32(), nullable=False),
    pa.field("takes", pa.int32(), nullable=False),        # takes requested in this batch
    pa.field("batch_size", pa.int32(), nullable=False),   # latent batch actually sampled
    pa.field("vae_tiled", pa.bool_(), nullable=False),
    # The takes' production parts (ResolvedTake.parts, e.g. "lora+control"): "" for plain
    # txt2img, null in parts written before the column existed (plain txt2img too). The
    # planning models are fitted to plain rows only, so heavier graphs do not skew them.
    pa.field("parts", pa.string()),
    pa.field("status", pa.string(), nullable=False),      # one of BATCH_STATUSES
    pa.field("attempt", pa.int32(), nullable=False),
    pa.field("queued_at", UTC_TIMESTAMP),
    pa.field("started_at", UTC_TIMESTAMP),
    pa.field("finished_at", UTC_TIMESTAMP, nullable=False),
    pa.field("queue_wait_s", pa.float64()),
    pa.field("execution_s", pa.float64()),
    pa.field("model_load_s", pa.float64()),
    pa.field("sampling_s", pa.float64()),
    pa.field("vae_decode_s", pa.float64()),
    pa.field("download_s", pa.float64()),
    pa.field("model_cache_hit", pa.bool_()),
    pa.field("cached_nodes", pa.int32()),
    pa.field("vram_estimated_mb", pa.float64()),
    pa.field("vram_budget_mb", pa.float64()),
    pa.field("vram_peak_mb", pa.float64()),
    pa.field("gpu_util_mean", pa.float64()),             # percent, 0..100
    pa.field("bytes_downloaded", pa.int64()),
    pa.field("images", pa.int32()),                      # images written to the render root
    pa.field("suspect_images", pa.int32()),  # of those, flagged by the output check
    pa.field("error_type", pa.string()),
    pa.field("error_message", pa.string()),
    pa.field("date", pa.string(), nullable=False),       # YYYY-MM-DD of finished_at (partition)
])

RUN_STATUSES = ("completed", "failed", "cancelled", "running")

# One row per flow run (written when it ends): what was asked, what dedup saved.
RUNS_SCHEMA = pa.schema([
    pa.field("run_id", pa.string(), nullable=False),
    pa.field("flow_run_id", pa.string()),
    pa.field("flow", pa.string(), nullable=False),             # "render_episode" | "draft_preview"
    pa.field("episode", pa.string(), nullable=False),
    pa.field("preset", pa.string()),                           # preset override, if any
    pa.field("servers", pa.list_(pa.string()), nullable=False),
    pa.field("started_at", UTC_TIMESTAMP, nullable=False),
    pa.field("finished_at", UTC_TIMESTAMP, nullable=False),
    pa.field("takes_requested", pa.int32(), nullable=False),
    pa.field("takes_deduped", pa.int32(), nullable=False),    # served from the output index
    pa.field("takes_rendered", pa.int32(), nullable=False),
    pa.field("takes_failed", pa.int32(), nullable=False),
    pa.field("batches", pa.int32(), nullable=False),
    pa.field("retries", pa.int32(), nullable=False),
    pa.field("oom_splits", pa.int32(), nullable=False),
    pa.field("model_swaps", pa.int32(), nullable=False),
    pa.field("status", pa.string(), nullable=False),           # one of RUN_STATUSES
    pa.field("date", pa.string(), nullable=False),  # YYYY-MM-DD of started_at (partition)
])
