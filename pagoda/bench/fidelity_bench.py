"""Teacher-forced top-1 agreement with the float32 model: Pagoda's engine (default and
``deterministic=True`` numerics) and transformers' own bfloat16, both against transformers in float32 on the same weights (the bundled Q4_1 GGUF
dequantized), over a held set of chats.

Each chat is a user message in the chat template followed by float32 transformers' greedy answer;
at every position of the sequence each system predicts the next token with the true prefix (teacher
forcing), and we count how often its top-1 equals float32's. Pagoda's predictions come from
``prompt_logprobs`` (its LM head's float32 logits).

    python -m pagoda.bench.fidelity_bench [--answer-len 48]
"""

from __future__ import annotations

import argparse
import os

import torch

CHATS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Explain photosynthesis to a ten-year-old.",
    "List three prime numbers and say why they are prime.",
    "How do I reverse a list in Python?",
    "Translate 'good morning, my friend' into Spanish and German.",
    "Give me a short motivational quote about learning.",
    "What causes the seasons on Earth?",
    "Summarise the plot of Romeo and Juliet in two sentences.",
    "Why is the sky blue?",
    "Suggest a name for a bakery that sells only bread.",
    "What is 17 times 23? Show your steps.",
    "Describe a lighthouse during a storm.",
    "What are the benefits of regular exercise?",
    "Tell me a fun fact about octopuses.",
    "How does a bicycle stay upright?",
]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--answer-len", type=int, default=48)
    args = p.parse_args()

    from transformers import AutoModelForCausalLM

    from pagoda import LLM, SamplingParams
    from pagoda.weights.default_model import default_model_path

    path = default_model_path()
    engines = {"pagoda (default)": LLM(show_progress=False),
               "pagoda (deterministic=True)": LLM(show_progress=False, deterministic=True)}
    llm = engines["pagoda (default)"]
    tokenizer = llm.get_tokenizer()
    ref = AutoModelForCausalLM.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path),
                                               dtype=torch.float32).eval()
    bf16 = AutoModelForCausalLM.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path),
                                                dtype=torch.bfloat16).eval()
    sequences = []
    with torch.inference_mode():
        for chat in CHATS:
            text = tokenizer.apply_chat_template([{"role": "user", "content": chat}], add_generation_prompt=True)
            ids = tokenizer.encode(text, add_special_tokens=False)
            out = ref.generate(torch.tensor([ids]), max_new_tokens=args.answer_len, do_sample=False)
            sequences.append(out[0].tolist())

    counts = dict.fromkeys([*engines, "transformers bf16"], 0)
    total = 0
    forced = SamplingParams(max_tokens=1, prompt_logprobs=1, temperature=0)
    results = {name: engine.generate(sequences, forced, use_tqdm=False) for name, engine in engines.items()}
    with torch.inference_mode():
        for i, seq in enumerate(sequences):
            x = torch.tensor([seq])
            want = ref(x).logits[0, :-1].argmax(-1).tolist()  # the prediction at each position for the next one
            total += len(want)
            got_bf16 = bf16(x).logits[0, :-1].float().argmax(-1).tolist()
            counts["transformers bf16"] += sum(a == b for a, b in zip(got_bf16, want, strict=True))
            for name in engines:
                got = [next(t for t, lp in entry.items() if lp.rank == 1) for entry in results[name][i].prompt_logprobs[1:]]
                counts[name] += sum(a == b for a, b in zip(got, want, strict=True))
    print(f"{len(sequences)} chats, {total} teacher-forced positions, top-1 agreement with float32 transformers:")
    for name, n in counts.items():
        print(f"  {name}: {n}/{total} = {100 * n / total:.2f}%")


if __name__ == "__main__":
    main()
