"""The paper's evaluation protocols (retrieval here; more in the evaluation suite)."""
