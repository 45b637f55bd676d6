"""What every layer shares and nothing else: readings, alerts and artefacts, rules and bands,
NEWS2 scoring, and the batch that flows through the processor. No I/O."""
