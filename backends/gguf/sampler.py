"""A request's sampling as llama.cpp's native sampler chain (llama_sampler_*): the logits never
reach Python unless logprobs or a grammar need them.

Order: logit bias, penalties, then greedy; or temperature, top-k, top-p, min-p, and the seeded draw.
Temperature comes first, as in vLLM and Hugging Face's warpers: top-p and min-p select from the
distribution the draw uses. A top-k or min-p filter before the draw is also what makes sampling
cheap on a large vocabulary (the draw's softmax then runs over a few candidates, not all 32k+).
"""

from __future__ import annotations

from backends.contract import SamplingParams

RANDOM_SEED = 0xFFFFFFFF  # llama.cpp: pick a random seed
PENALTY_WINDOW = 64  # tokens the presence and frequency penalties look back over


def chain(params: SamplingParams, bias: dict[int, float], n_vocab: int):
    """A llama-cpp-python LlamaSampler for `params`; `bias` is the checked logit bias (token id -> bias)."""
    from llama_cpp import _internals

    sampler = _internals.LlamaSampler()
    if bias:
        sampler.add_logit_bias(n_vocab, bias)
    if params.presence_penalty or params.frequency_penalty:
        sampler.add_penalties(n_vocab, PENALTY_WINDOW, 1.0, params.frequency_penalty, params.presence_penalty)
    if params.temperature == 0:
        sampler.add_greedy()
        return sampler
    sampler.add_temp(params.temperature)
    if params.top_k > 0:
        sampler.add_top_k(params.top_k)
    if params.top_p < 1.0:
        sampler.add_top_p(params.top_p, 1)
    if params.min_p > 0.0:
        sampler.add_min_p(params.min_p, 1)
    sampler.add_dist(RANDOM_SEED if params.seed is None else params.seed % RANDOM_SEED)
    return sampler
