"""Long-context QA evaluation across lengths and evidence depths."""
