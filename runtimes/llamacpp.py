"""The llama.cpp backend: runs an engine folder's GGUF files (language model + mmproj) for the session loop,
torch-free, through llama-cpp-python's low-level bindings.

llama-cpp-python's chat handlers clear the KV cache on every call; this backend keeps it. One llama.cpp context
is the session's cache: turn 1 (the low-res view) and turn 2 (the crops) are appended to it with explicit M-RoPE
positions from the one session loop, so a crop turn prefills only its own tokens, and `rewind` is
llama_memory_seq_rm. Text goes in as token ids (`forward_tokens`: llama.cpp looks its own, possibly quantized,
embedding table up; nothing is dequantised here), images as the embeddings mtmd's vision encoder returns, in
llama.cpp's embedding batches, at the positions the session computed.

Providers: cpu; cuda where llama-cpp-python was built with it (GGML_CUDA=on; README).
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

import numpy as np

from edge_awares.errors import BackendUnavailableError, ConfigError, EngineError, ProviderUnavailableError
from edge_awares.manifest import Manifest, load_manifest
from edge_awares.views import View

from .budget import BudgetedBackend, engine_threads, memory_budget

PROVIDERS = ("cpu", "cuda")
# Tokens per llama_decode call (llama.cpp's own default batch).
N_BATCH = 512
# Measured here: llama.cpp's CPU compute buffers for a prefill or a vision call held about this many times the
# float32 attention scores of the largest call (the planned working set of a step).
COMPUTE_OVERHEAD = 2.0
_GGML_F32, _GGML_F16 = 0, 1
# Flash attention per graph (measured on this CPU, benchmarks/bench_backends.py and the note of #12): the vision
# tower's attention over every patch is ~3x faster with it and gives the same features; the text model keeps it off
# (see TEXT_FLASH_ATTN's measurement in the README's llama.cpp section).
VISION_FLASH_ATTN = True
TEXT_FLASH_ATTN = False


def import_llama_cpp():
    """llama_cpp with its mtmd bindings (BackendUnavailableError, one line, if not installed)."""
    try:
        import llama_cpp
        import llama_cpp.mtmd_cpp  # noqa: F401
    except ImportError:
        raise BackendUnavailableError("the llama.cpp backend needs llama-cpp-python: pip install "
                                      "'edge-awares[llamacpp]' (README: building it, with CUDA)") from None
    except OSError as e:  # a wheel whose shared library does not load here
        raise BackendUnavailableError(f"llama-cpp-python is installed but its library does not load ({e})") from None
    return llama_cpp


_LOG_CALLBACK = None  # kept alive: llama.cpp holds the pointer


def quiet_logs(llama_cpp) -> None:
    """Route llama.cpp's and mtmd's log lines (model loading, clip warnings, timings) away from stderr: a CLI prints
    its own lines only. Errors reach the user as the typed errors this module raises."""
    global _LOG_CALLBACK
    if _LOG_CALLBACK is None:
        @llama_cpp.llama_log_callback
        def _drop(level, text, user_data):
            return None

        _LOG_CALLBACK = _drop
        llama_cpp.llama_log_set(_LOG_CALLBACK, ctypes.c_void_p(0))
        import llama_cpp.mtmd_cpp as mtmd
        mtmd.mtmd_log_set(_LOG_CALLBACK, ctypes.c_void_p(0))
        mtmd.mtmd_helper_log_set(_LOG_CALLBACK, ctypes.c_void_p(0))


def check_provider(provider: str) -> None:
    """ConfigError for an unknown provider, ProviderUnavailableError where this build cannot offload."""
    if provider not in PROVIDERS:
        raise ConfigError(f"unknown provider {provider!r} for the llama.cpp backend; legal: {', '.join(PROVIDERS)}")
    llama_cpp = import_llama_cpp()
    if provider == "cuda" and not llama_cpp.llama_supports_gpu_offload():
        raise ProviderUnavailableError("provider 'cuda' needs llama-cpp-python built with CUDA "
                                       "(CMAKE_ARGS=-DGGML_CUDA=on; README), this build runs on the CPU only")


class LlamaCppCache:
    """The session's KV cache: llama.cpp's memory of sequence 0 in the backend's context, `length` tokens held.

    llama.cpp removes cache cells by position; `_pos` keeps each held token's first M-RoPE position so `rewind`
    (by token count) can name the positions to drop."""

    def __init__(self, backend: "LlamaCppBackend", capacity: int):
        self._backend = backend
        self._capacity = capacity
        self._pos = np.zeros(0, dtype=np.int64)

    @property
    def length(self) -> int:
        return len(self._pos)

    @property
    def capacity(self) -> int:
        return self._capacity

    def rewind(self, n: int) -> None:
        if not 0 <= n <= self.length:
            raise ValueError(f"cannot rewind a cache of {self.length} tokens to {n}")
        if n == self.length:
            return
        p = int(self._pos[n])
        if n and int(self._pos[n - 1]) >= p:
            raise ValueError(f"cannot rewind to token {n}: it shares its position with the tokens before it "
                             "(inside an image); rewind to a turn boundary")
        b = self._backend
        if not b.llama_cpp.llama_memory_seq_rm(b._memory(), 0, p, -1):
            raise EngineError(f"llama.cpp could not drop the cache after position {p}")
        self._pos = self._pos[:n]

    def _appended(self, positions: np.ndarray) -> None:
        self._pos = np.concatenate([self._pos, positions[0].astype(np.int64)])


class LlamaCppBackend(BudgetedBackend):
    """Backend over an engine folder's GGUF files (see edge_awares/backend.py for the interface)."""

    name = "gguf"
    providers = PROVIDERS
    check_provider = staticmethod(check_provider)

    def __init__(self, engine: str | Path | Manifest, provider: str = "cpu", threads: int | None = None,
                 check_files: bool = True, memory_budget_bytes: int | None = None, n_batch: int = N_BATCH,
                 repack: bool | None = None):
        """`repack`: let llama.cpp use its CPU extra buffer types (repacked and AMX kernels; None:
        EDGE_AWARES_LLAMA_REPACK=1 turns them on). Off by default: this project's CPU has AMX, so the native build
        carries ggml's AMX backend, and llama.cpp 0.3.36 crashes in ggml_backend_amx_mul_mat (SIGSEGV, q8_0 and
        q4_K) on the first decode; the plain AVX-512 kernels work."""
        self.llama_cpp = llama_cpp = import_llama_cpp()
        self.mtmd = llama_cpp.mtmd_cpp
        check_provider(provider)
        quiet_logs(llama_cpp)
        manifest = engine if isinstance(engine, Manifest) else load_manifest(engine, check_files=check_files,
                                                                              backend="gguf")
        self.manifest = manifest.select("gguf")
        self.provider, self.n_batch = provider, n_batch
        self.budget = memory_budget_bytes or memory_budget()
        self.threads = threads or engine_threads() or _physical_cores()
        m = self.manifest.model
        self.hidden_size, self.vocab_size = m["hidden_size"], m["vocab_size"]
        # Float32 keys and values beside float32 weights (as the ONNX fp32 engine and the reference); f16 (llama.cpp's
        # default) beside quantized ones.
        self.kv_type = _GGML_F32 if self.manifest.precision == "f32" else _GGML_F16
        self._ctx = self._model = self._mtmd = None
        self._ctx_capacity = 0
        self._check_budget("loading the engine", self.weights_bytes())
        files = self.manifest.entry["files"]
        llama_cpp.llama_backend_init()
        mp = llama_cpp.llama_model_default_params()
        mp.n_gpu_layers = -1 if provider == "cuda" else 0
        if repack is None:
            repack = os.environ.get("EDGE_AWARES_LLAMA_REPACK", "") == "1"
        mp.use_extra_bufts = bool(repack)
        path = self.manifest.file(files["model"])
        self._model = llama_cpp.llama_model_load_from_file(str(path).encode(), mp)
        if not self._model:
            raise EngineError(f"{path}: llama.cpp cannot load the language model")
        n_embd = llama_cpp.llama_model_n_embd(self._model)
        n_vocab = llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(self._model))
        if (n_embd, n_vocab) != (self.hidden_size, self.vocab_size):
            raise EngineError(f"{path}: the GGUF model is hidden {n_embd}, vocabulary {n_vocab}; the manifest says "
                              f"{self.hidden_size}, {self.vocab_size}")
        self._load_mmproj(self.manifest.file(files["mmproj"]), provider)
        self._loaded = 1

    def _load_mmproj(self, path: Path, provider: str) -> None:
        mtmd = self.mtmd
        p = mtmd.mtmd_context_params_default()
        p.use_gpu = provider == "cuda"
        p.n_threads = self.threads
        p.print_timings = False
        p.warmup = False  # a warm-up reserves buffers for a 1288x1288 image; the budget plans per call instead
        p.flash_attn_type = _flash(self.llama_cpp, VISION_FLASH_ATTN)
        # mtmd resizes an image outside its token range; the session's views are already at their model size, so
        # the range is opened to every size the engine's geometry produces (each view's grid is checked below).
        g = self.manifest.geometry()
        p.image_min_tokens = 1
        p.image_max_tokens = max(1, g.max_pixels // g.factor ** 2)
        self._mtmd = mtmd.mtmd_init_from_file(str(path).encode(), self._model, p)
        if not self._mtmd:
            raise EngineError(f"{path}: llama.cpp (mtmd) cannot load the vision tower")
        if not mtmd.mtmd_decode_use_mrope(self._mtmd):
            raise EngineError(f"{path}: this mmproj does not use M-RoPE positions; it is not a Qwen2.5-VL vision tower")
        self._marker = mtmd.mtmd_default_marker()

    def close(self) -> None:
        """Free llama.cpp's context, vision tower and model (also on garbage collection)."""
        lc = getattr(self, "llama_cpp", None)
        if lc is None:
            return
        if self._ctx:
            lc.llama_free(self._ctx)
        if self._mtmd:
            self.mtmd.mtmd_free(self._mtmd)
        if self._model:
            lc.llama_model_free(self._model)
        self._ctx = self._mtmd = self._model = None

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    # -- memory budget ------------------------------------------------------------------------------
    def weights_bytes(self) -> int:
        """Bytes of the GGUF files (llama.cpp maps the model; the mmproj is read into memory)."""
        return self.manifest.size_bytes()

    def kv_bytes(self, capacity: int) -> int:
        m = self.manifest.model
        per = 4 if self.kv_type == _GGML_F32 else 2
        return 2 * m["num_layers"] * m["num_kv_heads"] * m["head_dim"] * capacity * per

    def prefill_bytes(self, n: int, past: int) -> int:
        """Working set of one llama_decode call of up to n_batch tokens after `past`: attention scores, logits."""
        m = self.manifest.model
        chunk = min(n, self.n_batch)
        return int(m["num_heads"] * chunk * (past + n) * 4 * COMPUTE_OVERHEAD) + 4 * self.vocab_size * 4

    def vision_bytes(self, view: View) -> int:
        """Working set of encoding one view: the scores of its full-attention layers over every patch."""
        vis = self.manifest.model["vision"]
        patches = view.grid_thw[1] * view.grid_thw[2]
        return int(vis["num_heads"] * patches * patches * 4 * COMPUTE_OVERHEAD)

    # -- Backend interface -------------------------------------------------------------------------
    def encode_images(self, views: list[View]) -> list[np.ndarray]:
        """mtmd encodes one image per call (llama.cpp's vision graph takes one image at a time)."""
        out = []
        for view in views:
            need = self.vision_bytes(view)
            self._check_budget(f"encoding a view of {view.n_tokens} visual tokens", need)
            self._vision_peak = max(self._vision_peak, need)
            out.append(self._encode(view))
        return out

    def _encode(self, view: View) -> np.ndarray:
        mtmd = self.mtmd
        rgb = np.ascontiguousarray(np.asarray(view.model_image().convert("RGB"), dtype=np.uint8))
        bitmap = mtmd.mtmd_bitmap_init(view.width, view.height, rgb.ctypes.data_as(ctypes.POINTER(ctypes.c_uint8)))
        chunks = mtmd.mtmd_input_chunks_init()
        try:
            text = mtmd.mtmd_input_text(text=self._marker, text_len=len(self._marker), add_special=False,
                                        parse_special=True)
            arr = (mtmd.mtmd_bitmap_p_ctypes * 1)(bitmap)
            if mtmd.mtmd_tokenize(self._mtmd, chunks, ctypes.byref(text), arr, 1) != 0:
                raise EngineError(f"llama.cpp (mtmd) could not take a {view.width}x{view.height} view")
            # mtmd wraps the image in its own vision_start/end text chunks; the session's ids already hold them.
            image = None
            for i in range(mtmd.mtmd_input_chunks_size(chunks)):
                chunk = mtmd.mtmd_input_chunks_get(chunks, i)
                if mtmd.mtmd_input_chunk_get_type(chunk) == mtmd.MTMD_INPUT_CHUNK_TYPE_IMAGE:
                    image = chunk
            tokens = mtmd.mtmd_input_chunk_get_tokens_image(image) if image is not None else None
            grid = (mtmd.mtmd_image_tokens_get_ny(tokens), mtmd.mtmd_image_tokens_get_nx(tokens)) if tokens else None
            if grid != view.merged_hw:
                raise EngineError(f"llama.cpp (mtmd) made a {grid} token grid of a view the session lays out as "
                                  f"{view.merged_hw}; its preprocessing would not match the model's")
            if mtmd.mtmd_encode_chunk(self._mtmd, image) != 0:
                raise EngineError(f"llama.cpp (mtmd) failed to encode a {view.width}x{view.height} view")
            ptr = mtmd.mtmd_get_output_embd(self._mtmd)
            n = view.n_tokens
            return np.ctypeslib.as_array(ptr, shape=(n * self.hidden_size,)).reshape(n, self.hidden_size).copy()
        finally:
            mtmd.mtmd_input_chunks_free(chunks)
            mtmd.mtmd_bitmap_free(bitmap)

    def new_cache(self, capacity: int) -> LlamaCppCache:
        """An empty cache of `capacity` tokens: the context is made once and cleared for each session (made anew
        only when a session needs more room than it has)."""
        lc = self.llama_cpp
        if self._ctx is None or capacity > self._ctx_capacity:
            if self._ctx is not None:
                lc.llama_free(self._ctx)
                self._ctx, self._kv_held = None, 0
            self._check_budget(f"a KV cache of {capacity} tokens", self.kv_bytes(capacity))
            cp = lc.llama_context_default_params()
            cp.n_ctx = capacity
            cp.n_batch = cp.n_ubatch = min(self.n_batch, capacity)
            cp.n_seq_max = 1
            cp.n_threads = cp.n_threads_batch = self.threads
            cp.type_k = cp.type_v = self.kv_type
            # Off: on this CPU it decoded slower and moved the logits 7% from the reference (0.56% off; FACTS.md).
            cp.flash_attn_type = _flash(lc, TEXT_FLASH_ATTN)
            cp.no_perf = False  # llama.cpp's token counters and timings (evaluated_tokens)
            self._ctx = lc.llama_init_from_model(self._model, cp)
            if not self._ctx:
                raise EngineError(f"llama.cpp could not make a context of {capacity} tokens")
            self._ctx_capacity = capacity
            self._kv_held = self.kv_bytes(capacity)
        else:
            lc.llama_memory_clear(self._memory(), True)
        return LlamaCppCache(self, capacity)

    def evaluated_tokens(self) -> int:
        """Tokens llama.cpp has evaluated in this backend's context so far (its own counters, prompt and decode)."""
        if self._ctx is None:
            return 0
        d = self.llama_cpp.llama_perf_context(self._ctx)
        # llama.cpp reports a count of 0 as 1; a stage that never ran has no time either
        return (d.n_p_eval if d.t_p_eval_ms > 0 else 0) + (d.n_eval if d.t_eval_ms > 0 else 0)

    def _memory(self):
        return self.llama_cpp.llama_get_memory(self._ctx)

    def forward_tokens(self, ids: np.ndarray, images: list[tuple[int, np.ndarray]], positions: np.ndarray,
                       cache: LlamaCppCache) -> np.ndarray:
        """Append `ids` [n] at `positions` [3, n], the features `images` [(offset, [k, hidden])] standing in for the
        ids at offset..offset+k; the logits [vocab] of the last token. Text runs as token batches (one position per
        token: a text token's three M-RoPE positions are equal), images as embedding batches (t, h, w, 0)."""
        ids = np.asarray(ids)
        n = len(ids)
        if n == 0:
            raise ValueError("forward_tokens needs at least one token")
        if cache.length + n > cache.capacity:
            raise EngineError(f"KV cache overflow: {cache.length + n} tokens exceed its capacity of {cache.capacity}")
        if n > 1:
            self._check_budget(f"a prefill of {n} tokens after {cache.length}", self.prefill_bytes(n, cache.length))
        spans, at = [], 0
        for offset, feats in sorted(images, key=lambda x: x[0]):
            if offset > at:
                spans.append((at, offset, None))
            spans.append((offset, offset + len(feats), np.asarray(feats, dtype=np.float32)))
            at = offset + len(feats)
        if at < n:
            spans.append((at, n, None))
        for s, e, feats in spans:
            for i in range(s, e, self.n_batch):
                j = min(e, i + self.n_batch)
                rows = None if feats is None else feats[i - s:j - s]
                self._decode(ids[i:j], rows, positions[:, i:j], last=j == n)
        cache._appended(positions)
        ptr = self.llama_cpp.llama_get_logits_ith(self._ctx, -1)
        return np.ctypeslib.as_array(ptr, shape=(self.vocab_size,)).copy()

    def _decode(self, ids: np.ndarray, embeds: np.ndarray | None, pos: np.ndarray, last: bool) -> None:
        """One llama_decode call on a batch built over numpy arrays (they outlive the call)."""
        lc = self.llama_cpp
        k = pos.shape[1]
        batch = lc.llama_batch()
        batch.n_tokens = k
        keep = []
        if embeds is None:
            if not (np.array_equal(pos[0], pos[1]) and np.array_equal(pos[0], pos[2])):
                raise EngineError("a text token's three M-RoPE positions differ; the session lays text out on one")
            tok = np.ascontiguousarray(ids, dtype=np.int32)
            flat = np.ascontiguousarray(pos[0], dtype=np.int32)
            batch.token = tok.ctypes.data_as(ctypes.POINTER(lc.llama_token))
            keep.append(tok)
        else:
            emb = np.ascontiguousarray(embeds, dtype=np.float32)
            # section-major: t for every token, then h, then w, then llama.cpp's fourth (unused, 0)
            flat = np.ascontiguousarray(np.concatenate([pos.astype(np.int32), np.zeros((1, k), np.int32)]).reshape(-1))
            batch.embd = emb.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
            keep.append(emb)
        batch.pos = flat.ctypes.data_as(ctypes.POINTER(lc.llama_pos))
        n_seq = np.ones(k, dtype=np.int32)
        seq0 = (lc.llama_seq_id * 1)(0)
        seq = (ctypes.POINTER(lc.llama_seq_id) * k)(*([ctypes.cast(seq0, ctypes.POINTER(lc.llama_seq_id))] * k))
        out = np.zeros(k, dtype=np.int8)
        out[-1] = 1 if last else 0
        batch.n_seq_id = n_seq.ctypes.data_as(ctypes.POINTER(ctypes.c_int32))
        batch.seq_id = seq
        batch.logits = out.ctypes.data_as(ctypes.POINTER(ctypes.c_int8))
        rc = lc.llama_decode(self._ctx, batch)
        if rc != 0:
            raise EngineError(f"llama.cpp failed to decode a batch of {k} {'tokens' if embeds is None else 'image rows'}"
                              f" (llama_decode returned {rc})")
        del keep, flat, n_seq, seq0, seq, out


def _flash(llama_cpp, on: bool) -> int:
    return llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED if on else llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED


def _physical_cores() -> int:
    """llama.cpp's own default thread count is the physical cores; the CPUs this process may use stand in."""
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))
