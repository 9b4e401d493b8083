"""The onnxruntime backend: runs an engine directory's graphs for the session loop, torch-free.

The KV cache is one buffer per layer and kind, allocated once per session at its full capacity; the decoder
graph's GroupQueryAttention reads and writes it in place through I/O binding (past and present bound to the
same memory), so a crop turn appends to the cache instead of copying it. All views of a turn are encoded in
one batched vision call. Execution providers: cpu, cuda, tensorrt (vision only; the decoder stays on CUDA).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edge_awares.errors import EngineError, ProviderUnavailableError
from edge_awares.manifest import Manifest, load_manifest
from edge_awares.views import View

from .budget import GiB, BudgetedBackend, engine_threads, memory_budget, process_rss  # noqa: F401 (re-exported)

from .vision_layout import VISION_INPUTS, VisionLayout, vision_layout

PROVIDERS = ("cpu", "cuda", "tensorrt")
_ORT_NAMES = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}


def _import_ort():
    try:
        import onnxruntime as ort
    except ImportError:
        from edge_awares.errors import BackendUnavailableError

        raise BackendUnavailableError("the ONNX runtime backend needs onnxruntime: pip install onnxruntime "
                                      "(or onnxruntime-gpu for cuda/tensorrt)") from None
    return ort


def check_provider(provider: str) -> None:
    """Raise ConfigError for an unknown provider name, ProviderUnavailableError if this build lacks it."""
    if provider not in PROVIDERS:
        from edge_awares.errors import ConfigError

        raise ConfigError(f"unknown provider {provider!r}; legal: {', '.join(PROVIDERS)}")
    ort = _import_ort()
    available = ort.get_available_providers()
    needed = [_ORT_NAMES[provider]] + (["CUDAExecutionProvider"] if provider == "tensorrt" else [])
    missing = [n for n in needed if n not in available]
    if missing:
        raise ProviderUnavailableError(
            f"provider {provider!r} needs {', '.join(missing)}, which this onnxruntime build lacks (available: "
            f"{', '.join(available)}); install onnxruntime-gpu on a machine with CUDA"
            + (" and TensorRT libraries" if provider == "tensorrt" else ""))


def tensorrt_options(manifest: Manifest | dict, cache_dir: str | Path, fp16: bool = True,
                     max_views: int = 4) -> dict:
    """TensorRT execution-provider options for the vision graph, built from the manifest.

    Dynamic-shape profiles span one view at the geometry's smallest size up to `max_views` views at its
    largest, so a plan built once covers every view size; plans are cached in `cache_dir`. INT8 comes from
    the graph's Q/DQ nodes (TensorRT 11 has no implicit calibration), so it is enabled only for a QDQ graph.
    """
    from edge_awares.protocols import protocol_from_dict
    from edge_awares.views import Geometry

    from edge_awares.manifest import upgrade

    data = manifest.data if isinstance(manifest, Manifest) else upgrade(manifest)  # a raw dict of either schema
    # The protocol's own view geometry (e.g. awares caps every view at 2048 tokens, ergo at 640).
    g = protocol_from_dict(data["protocol"]).geometry(Geometry.from_dict(data["geometry"]))
    vis = data["backends"]["onnx"]["graphs"]["vision"]
    per_patch = g.patch_size ** 2
    unit = g.merge_size ** 2
    lo = max(unit, g.min_pixels // per_patch // unit * unit)
    hi = max(lo, g.max_pixels // per_patch // unit * unit)
    opt = min(hi, max(lo, (lo + hi) // 4 // unit * unit))
    window = int(data["model"]["vision"]["window_patches"])
    feat = int(data["model"]["vision"]["in_features"])

    def shapes(n: int, views: int, smallest: bool = False) -> str:
        # Edge windows are partial: a view has at most n / window + (rows + cols) windows; a tiny view's
        # windows and image segments can be as short as one merge unit.
        windows = 1 if smallest else -(-n // window) + views * 2 * int(np.sqrt(n // unit) + 1)
        wlen, ilen = (unit, unit) if smallest else (window, n)
        return ",".join([
            f"pixel_values:{n}x{feat}", f"rotary_pos:{n}x2", f"window_index:{windows}x{wlen}",
            f"window_back:{n}", f"image_index:{views}x{ilen}", f"image_back:{n}", f"merge_order:{n // unit}",
        ])

    opts = {
        "trt_engine_cache_enable": "True",
        "trt_engine_cache_path": str(cache_dir),
        "trt_timing_cache_enable": "True",
        "trt_fp16_enable": "True" if fp16 else "False",
        "trt_int8_enable": "True" if vis.get("quantization") == "qdq-int8" else "False",
        "trt_profile_min_shapes": shapes(unit, 1, smallest=True),
        "trt_profile_opt_shapes": shapes(opt, 1),
        "trt_profile_max_shapes": shapes(hi * max_views, max_views),
    }
    return opts


def _providers(provider: str, graph: str, manifest: Manifest, cache_dir: Path | None) -> list:
    if provider == "cpu":
        return ["CPUExecutionProvider"]
    cuda = ("CUDAExecutionProvider", {"device_id": "0"})
    if provider == "tensorrt" and graph == "vision":
        trt_dir = cache_dir or _trt_cache_dir(manifest)
        return [("TensorrtExecutionProvider", tensorrt_options(manifest, trt_dir)), cuda, "CPUExecutionProvider"]
    return [cuda, "CPUExecutionProvider"]


def _trt_cache_dir(manifest: Manifest) -> Path:
    """Plans are per device and per graph: cached outside the (possibly read-only) engine directory, keyed
    by the vision graph's sha256."""
    from edge_awares.paths import cache_dir

    root = cache_dir()
    key = manifest.data["files"][manifest.graph("vision")["file"]]["sha256"][:16]
    return root / "tensorrt" / key


class OnnxCache:
    """Per-layer key/value buffers [1, kv_heads, capacity, head_dim], allocated once; `length` tokens valid.

    Rewinding only moves the length: GroupQueryAttention reads `seqlens_k`, never past it, and overwrites
    what lies beyond when the cache grows again.
    """

    def __init__(self, backend: "OnnxBackend", capacity: int):
        ort = backend.ort
        m = backend.manifest.model
        shape = (1, m["num_kv_heads"], capacity, m["head_dim"])
        dtype = np.float16 if backend.kv_dtype == "float16" else np.float32
        device = "cuda" if backend.provider != "cpu" else "cpu"
        # Zero-filled (calloc: pages become resident only as the cache fills). On CPU the OrtValue wraps
        # the numpy memory itself, so the arrays are kept alive here; on CUDA they are copied to the device.
        self._host = [np.zeros(shape, dtype) for _ in backend.past_names]
        self.buffers = [ort.OrtValue.ortvalue_from_numpy(a, device, 0) for a in self._host]
        self._capacity = capacity
        self._length = 0
        # Snapshots copy the host arrays, which are the buffers themselves only on the CPU provider.
        self.can_snapshot = device == "cpu"

    @property
    def length(self) -> int:
        return self._length

    @property
    def capacity(self) -> int:
        return self._capacity

    def rewind(self, n: int) -> None:
        if not 0 <= n <= self._length:
            raise ValueError(f"cannot rewind a cache of {self._length} tokens to {n}")
        self._length = n

    def advance(self, n: int) -> None:
        self._length += n

    def snapshot(self, n: int) -> list[np.ndarray]:
        """Copies of the first `n` positions of every layer's keys and values (the prefix cache keeps them)."""
        if not 0 < n <= self._length:
            raise ValueError(f"cannot snapshot {n} of a cache of {self._length} tokens")
        return [h[:, :, :n].copy() for h in self._host]

    def snapshot_bytes(self, n: int) -> int:
        return sum(h[:, :, :n].nbytes for h in self._host)

    def restore(self, snap: list[np.ndarray], n: int) -> None:
        """Take back the first `n` positions of a snapshot (of this engine's layout) into an empty cache."""
        if self._length or n > snap[0].shape[2] or n > self._capacity:
            raise ValueError(f"cannot restore {n} positions into a cache holding {self._length}")
        for h, s in zip(self._host, snap):
            h[:, :, :n] = s[:, :, :n]
        self._length = n


class OnnxBackend(BudgetedBackend):
    """Backend over an engine directory (see edge_awares/backend.py for the interface)."""

    name = "onnx"
    providers = PROVIDERS
    check_provider = staticmethod(check_provider)

    def __init__(self, engine: str | Path | Manifest, provider: str = "cpu", threads: int | None = None,
                 check_files: bool = True, trt_cache_dir: str | Path | None = None, profile_dir: str | None = None,
                 memory_budget_bytes: int | None = None):
        self.ort = ort = _import_ort()
        check_provider(provider)
        self.manifest = engine if isinstance(engine, Manifest) else load_manifest(engine, check_files=check_files)
        self.provider = provider
        self.budget = memory_budget_bytes or memory_budget()
        self._check_budget("loading the engine", self.weights_bytes())
        threads = threads or engine_threads()
        m = self.manifest.model
        self.hidden_size, self.vocab_size = m["hidden_size"], m["vocab_size"]
        dec = self.manifest.graph("decoder")
        self.past_names, self.present_names = dec["kv"]["past"], dec["kv"]["present"]
        # The graphs' tensor names come from the manifest, bound to fixed roles by position.
        self._dec_in = _bind(self.manifest, "decoder", "inputs", DECODER_INPUTS)
        self._dec_out = _bind(self.manifest, "decoder", "outputs", DECODER_OUTPUTS)
        self._vis_in = _bind(self.manifest, "vision", "inputs", VISION_INPUTS)
        self.kv_dtype = dec["kv"]["dtype"]
        vis = self.manifest.model["vision"]
        self._merge, self._window, self._patch = vis["merge_size"], vis["window_size"], vis["patch_size"]

        def session(graph: str):
            so = ort.SessionOptions()
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            if graph == "vision":
                # The vision graph's working set is transient and quadratic in the tokens of a call; onnxruntime's
                # arena would keep every call's peak (measured: nine 972-token crops, one call each, grew the
                # process to 2.0 GB with the arena, 1.2 GB without it; no slower at the demo's sizes).
                so.enable_cpu_mem_arena = False
            if threads:
                so.intra_op_num_threads = threads
            if profile_dir:
                so.enable_profiling = True
                so.profile_file_prefix = str(Path(profile_dir) / f"ort_{graph}")
            # Every file of the graph checked inside the folder and reached through no link (onnxruntime
            # opens the external-data files itself, beside the main one).
            path, *_ = self.manifest.graph_files(graph)
            try:
                return ort.InferenceSession(str(path), so, providers=_providers(
                    provider, graph, self.manifest, Path(trt_cache_dir) if trt_cache_dir else None))
            except Exception as e:  # onnxruntime raises its own untyped exceptions
                raise EngineError(f"{path}: onnxruntime cannot load the {graph} graph ({e})") from None

        self.vision = session("vision")
        self.decoder = session("decoder")
        self._loaded = 1
        self._vision_dtype = np.float16 if self.vision.get_inputs()[0].type == "tensor(float16)" else np.float32
        emb = self.manifest.graph("embeddings")
        self._table = _embedding_table(self.manifest.path("embeddings"), emb)
        if list(self._table.shape) != [self.vocab_size, self.hidden_size]:
            raise EngineError(f"{self.manifest.root}: embeddings are {self._table.shape}, expected "
                              f"[{self.vocab_size}, {self.hidden_size}] ({emb['file']})")
        self._embeds_dtype = np.float16 if dec.get("embeds_dtype") == "float16" else np.float32

    # -- memory budget ------------------------------------------------------------------------------
    def weights_bytes(self) -> int:
        """Bytes of the engine's files (the weights onnxruntime maps or loads)."""
        return self.manifest.size_bytes()

    def kv_bytes(self, capacity: int) -> int:
        m = self.manifest.model
        per = 2 if self.kv_dtype == "float16" else 4
        return 2 * m["num_layers"] * m["num_kv_heads"] * m["head_dim"] * capacity * per

    def _attention_bytes(self, layout) -> int:
        """Working set of the vision graph's largest attention (scores and probabilities in float32, and the
        gathered queries, keys and values) times the overhead measured on onnxruntime, computed from the layout
        before anything runs."""
        vis = self.manifest.model["vision"]
        heads, dim = vis["num_heads"], vis["hidden_size"] // vis["num_heads"]
        worst = 0
        for index in (layout.window_index, layout.image_index):
            segs, length = index.shape
            worst = max(worst, segs * heads * length * (2 * length + 3 * dim) * 4)
        return int(worst * VISION_OVERHEAD)

    def _vision_chunks(self, views: list[View]) -> list[tuple[list[View], VisionLayout]]:
        """Views in groups encoded by one call each, with each group's layout: attention never crosses images,
        so encoding them apart gives the same features, and the peak is the largest group's, not the sum of all
        (nine 1k-token crops of a 12 MP photo in one call held 8.8 GB). Small views still share a call."""
        def layout_of(group):
            return vision_layout([x.grid_thw for x in group], self._merge, self._window, self._patch)

        chunks, current, current_layout = [], [], None
        for v in views:
            trial = current + [v]
            layout = layout_of(trial)
            if current and self._attention_bytes(layout) > VISION_CHUNK_BYTES:
                chunks.append((current, current_layout))
                trial, layout = [v], layout_of([v])
            current, current_layout = trial, layout
        return chunks + [(current, current_layout)]

    # -- Backend interface -------------------------------------------------------------------------
    def encode_images(self, views: list[View]) -> list[np.ndarray]:
        if not views:
            return []
        chunks = self._vision_chunks(views)
        attention = max(self._attention_bytes(layout) for _, layout in chunks)
        self._check_budget(f"encoding {len(views)} view(s) of {sum(v.n_tokens for v in views)} visual tokens "
                           f"(largest call: {max(len(c) for c, _ in chunks)} view(s))", attention)
        self._vision_peak = max(self._vision_peak, attention)
        features = []
        for chunk, layout in chunks:
            pixels = np.concatenate([v.pixel_values() for v in chunk], axis=0).astype(self._vision_dtype, copy=False)
            feeds = {self._vis_in[role]: value for role, value in layout.inputs(pixels).items()}
            out = self.vision.run(None, feeds)[0].astype(np.float32, copy=False)
            features += np.split(out, np.cumsum(layout.tokens)[:-1])
        return features

    def embed_tokens(self, ids: np.ndarray) -> np.ndarray:
        return np.asarray(self._table[np.asarray(ids, dtype=np.int64)], dtype=np.float32)

    def new_cache(self, capacity: int) -> OnnxCache:
        self._kv_held = 0  # the session's previous cache is released with it
        self._check_budget(f"a KV cache of {capacity} tokens", self.kv_bytes(capacity))
        self._kv_held = self.kv_bytes(capacity)
        return OnnxCache(self, capacity)

    def prefill_bytes(self, n: int, past: int) -> int:
        """Working set of one decoder call on `n` new tokens after `past` cached ones: the attention
        probabilities of its largest chunk (float32, times the measured overhead) and its hidden states (the
        graph's logits are the last token's only)."""
        m = self.manifest.model
        chunk = min(n, PREFILL_CHUNK)
        probs = m["num_heads"] * chunk * (past + n) * 4
        return int(probs * VISION_OVERHEAD) + 8 * chunk * m["hidden_size"] * 4

    def forward(self, embeds: np.ndarray, positions: np.ndarray, cache: OnnxCache) -> np.ndarray:
        n = embeds.shape[0]
        total = cache.length + n
        if total > cache.capacity:
            raise EngineError(f"KV cache overflow: {total} tokens exceed its capacity of {cache.capacity}")
        if n > 1:
            self._check_budget(f"a prefill of {n} tokens after {cache.length}", self.prefill_bytes(n, cache.length))
        if n <= PREFILL_CHUNK:
            return self._forward(embeds, positions, cache)
        # A long prefill runs in chunks on the cache, as a crop turn does: the same result (attention is causal and
        # each chunk sees every earlier key), with attention scores for one chunk at a time, not n x n.
        for i in range(0, n, PREFILL_CHUNK):
            logits = self._forward(embeds[i:i + PREFILL_CHUNK], positions[:, i:i + PREFILL_CHUNK], cache)
        return logits  # the last token's, as the interface returns

    def _forward(self, embeds: np.ndarray, positions: np.ndarray, cache: OnnxCache) -> np.ndarray:
        n = embeds.shape[0]
        total = cache.length + n
        io = self.decoder.io_binding()
        names = self._dec_in
        io.bind_cpu_input(names["inputs_embeds"], np.ascontiguousarray(embeds[None], dtype=self._embeds_dtype))
        io.bind_cpu_input(names["position_ids"], np.ascontiguousarray(positions, dtype=np.int64).reshape(3, 1, n))
        io.bind_cpu_input(names["seqlens_k"], np.array([total - 1], dtype=np.int32))
        io.bind_cpu_input(names["total_sequence_length"], np.array(total, dtype=np.int32))
        io.bind_output(self._dec_out["logits"], "cpu")
        for past, present, buf in zip(self.past_names, self.present_names, cache.buffers):
            io.bind_ortvalue_input(past, buf)
            io.bind_ortvalue_output(present, buf)  # the same memory: written in place
        self.decoder.run_with_iobinding(io)
        cache.advance(n)
        return io.get_outputs()[0].numpy()[0].astype(np.float32, copy=False)


# The roles of the decoder's inputs and outputs, in the order the manifest lists their names (the exporter writes
# these names; another exporter may name them otherwise). The vision graph's are vision_layout.VISION_INPUTS.
DECODER_INPUTS = ("inputs_embeds", "position_ids", "seqlens_k", "total_sequence_length")
DECODER_OUTPUTS = ("logits",)


def _bind(manifest: Manifest, graph: str, key: str, roles: tuple[str, ...]) -> dict[str, str]:
    """Role -> the tensor name graphs.GRAPH.KEY lists at that position; EngineError if the counts differ."""
    names = manifest.graph(graph).get(key)
    if not isinstance(names, list) or len(names) != len(roles):
        raise EngineError(f"{manifest.root}: graphs.{graph}.{key} should list {len(roles)} tensor names "
                          f"({', '.join(roles)}), not {names!r}")
    return dict(zip(roles, names))


def _embedding_table(path: Path, entry: dict) -> np.ndarray:
    """The token table, memory-mapped (only the rows of tokens actually used are read): an .npy file, or a
    [vocab, hidden] block at `offset` inside another file (the decoder's data, where a tied lm_head's matrix
    serves as the table: stored once)."""
    try:
        if "offset" not in entry:
            return np.load(path, mmap_mode="r")
        dtype = {"float32": np.float32, "float16": np.float16}[entry["dtype"]]
        return np.memmap(path, dtype=dtype, mode="r", offset=int(entry["offset"]),
                         shape=tuple(int(d) for d in entry["shape"]))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise EngineError(f"{path}: cannot map the token-embedding table ({e})") from None


# Measured: onnxruntime's CPU provider held ~2x the two float32 score matrices of a vision attention (nine 972-token
# crops of a 12 MP photo: 8.5 GB over the process baseline for 4.5 GB of scores and probabilities).
VISION_OVERHEAD = 2.0
# Views are grouped into one vision call while the call's planned attention stays under this (a lone bigger view
# gets a call of its own).
VISION_CHUNK_BYTES = 256 << 20
# Longer prefills run in chunks of this many tokens (llama.cpp's default micro-batch is the same 512).
PREFILL_CHUNK = 512
