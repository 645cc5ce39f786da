"""The validated configuration of a persona run (what config.json holds and the CLI flags mean)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator


class PersonaConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["personas"] = Field("personas", description="Job kind; always 'personas' for this runner.")
    stories: str = Field("default", description="Story file (.json or .csv with name, occupation, story) or 'default'.")
    n_stories: int | None = Field(None, ge=1, le=1000, description="Use only the first N stories (all when unset).")
    n_questions: int = Field(20, ge=1, le=100000, description="Questions drawn from the data, one response pair each.")
    mode: Literal["pairwise", "scoring"] = Field("scoring", description="pairwise: A/B in both orders; scoring: grade each response.")
    scoring_method: Literal["generate", "logits", "both"] = Field(
        "both", description="Scoring mode only: parse generated [[t, i, h, p]] grades, read grades from logits "
                            "(an endpoint's logprobs; text when it sends none), or both.")
    pairwise_method: Literal["generate", "logits", "both"] = Field(
        "generate", description="Pairwise mode only: parse generated [[A]]/[[B]], read P(A) vs P(B) after '[[' "
                                "from logits (an endpoint's logprobs; text when it sends none), or both.")
    judge: str = Field("default", description="'default' (= 'bundled-smollm2', the SmolLM2 GGUF), 'bundled-gemma3' "
                                              "(Gemma 3 270M GGUF), a model id / folder / .gguf path, "
                                              "or 'openai[:model]' for an OpenAI-compatible endpoint from the environment.")
    data: str = Field("offline", description="'offline' (the generated corpus) or an UltraFeedback-schema file path.")
    corpus_size: int = Field(300, ge=1, le=100000, description="Questions in the generated offline corpus.")
    seed: int = Field(0, ge=0, description="Seeds the corpus, question choice and presentation order.")
    max_new_tokens: int | None = Field(None, ge=1, le=2048, description="Generation budget (default 8 pairwise, 64 scoring).")
    batch_size: int = Field(4, ge=1, le=256, description="Prompts per forward pass (local) or concurrent requests (OpenAI).")
    reuse_prefix: bool = Field(True, description="Local judge: compute each persona's prompt prefix once and reuse its KV cache.")
    threads: int | None = Field(None, ge=1, le=256, description="torch CPU threads for the local judge.")
    quality_probe: int = Field(4, ge=0, le=200, description="Questions (x4 responses) for the judge-quality probe "
                                                            "written to quality.json before the run; 0 skips it.")
    dry_run: bool = Field(False, description="Tiny run: 2 stories x 2 questions, short generations.")

    @field_validator("judge")
    @classmethod
    def _known_bundled_judge(cls, v: str) -> str:
        from core.common.bundled import BUNDLED_JUDGES

        if v.startswith("bundled-") and v not in BUNDLED_JUDGES:
            raise ValueError(f"unknown bundled judge {v!r}; known: default, {', '.join(BUNDLED_JUDGES)}")
        return v


def validate_config(data: dict) -> PersonaConfig:
    """PersonaConfig or ValueError whose text names every bad field."""
    try:
        return PersonaConfig.model_validate(data)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc']) or 'config'}: {err['msg']}" for err in e.errors())
        raise ValueError(f"invalid persona config: {problems}") from None
