"""Language stage: prompts, model loading and batched generation."""
