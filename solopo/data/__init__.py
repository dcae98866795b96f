"""Data: items (question, answers, evidence, distractors) -> short/long contexts -> preference pairs -> batches."""
